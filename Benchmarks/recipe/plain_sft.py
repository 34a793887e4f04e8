"""The plain-PyTorch baseline for the recipe's throughput: the same model (random init from a
config folder), the same LoRA or full fine-tune, dtype, batch and sequence length, AdamW and
gradient clipping, on full-length random batches, in a bare loop: no torchrun, no Capstan, no
data pipeline, no checkpoints. Prints one JSON line.

    python3 plain_sft.py MODEL_DIR --method lora --batch 4 --seq 2048 --steps 20 --warmup 3

--fsdp (under torchrun): the bare FSDP2 loop the recipe's `parallelism: fsdp` is measured
against: every transformer block and the root sharded with fully_shard (bf16 weights on GPU,
or with --mixed fp32 weights and bf16 compute), gradients synchronised every step. tokens_per_s is the whole job's.
"""
import os
import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--method", default="lora")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--lora-rank", type=int, default=16)
ap.add_argument("--gradient-checkpointing", action="store_true")
ap.add_argument("--fsdp", action="store_true")
ap.add_argument("--mixed", action="store_true", help="fsdp on GPU: fp32 weights, bf16 compute (else bf16 weights)")
a = ap.parse_args()

gpu = torch.cuda.is_available()
world = int(os.environ.get("WORLD_SIZE", "1"))
local = int(os.environ.get("LOCAL_RANK", "0"))
device = torch.device("cuda", local) if gpu else torch.device("cpu")
if gpu:
    torch.cuda.set_device(device)
dtype = torch.bfloat16 if gpu and not a.mixed else torch.float32
if a.fsdp:
    import torch.distributed as dist
    dist.init_process_group("nccl" if gpu else "gloo", device_id=device if gpu else None)
torch.manual_seed(0)
with (torch.device("cpu") if a.fsdp else device):
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.model), dtype=dtype)
if a.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
if a.method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    if a.gradient_checkpointing:
        model.enable_input_require_grads()
if a.fsdp:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    kw = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)} if gpu and a.mixed else {}
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    for m in [m for m in model.modules() if type(m).__name__ in names]:
        fully_shard(m, **kw)
    fully_shard(model, **kw)
model.to(device).train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-4 if a.method == "lora" else 2e-5, fused=gpu or None)
ids = torch.randint(0, 512, (a.batch, a.seq), device=device)
times = []
for i in range(a.warmup + a.steps):
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if gpu:
        torch.cuda.synchronize()
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
step = sum(times) / len(times)
if a.fsdp and int(os.environ.get("RANK", "0")) != 0:
    raise SystemExit(0)
print(json.dumps({"baseline": "plain-fsdp" if a.fsdp else "plain", "world": world, "method": a.method, "batch": a.batch, "seq": a.seq, "steps": a.steps,
                  "step_time_s": round(step, 4), "tokens_per_s": round(world * a.batch * a.seq / step, 1),
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if gpu else None,
                  "device": torch.cuda.get_device_name() if gpu else "cpu"}), flush=True)
