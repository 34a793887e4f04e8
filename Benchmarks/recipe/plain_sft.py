"""The plain-PyTorch baseline for the recipe's throughput: the same model (random init from a
config folder), the same LoRA or full fine-tune, dtype, batch and sequence length, AdamW and
gradient clipping, on full-length random batches, in a bare loop: no torchrun, no Capstan, no
data pipeline, no checkpoints. Prints one JSON line.

    python3 plain_sft.py MODEL_DIR --method lora --batch 4 --seq 2048 --steps 20 --warmup 3
"""
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
a = ap.parse_args()

gpu = torch.cuda.is_available()
device = torch.device("cuda" if gpu else "cpu")
dtype = torch.bfloat16 if gpu else torch.float32
torch.manual_seed(0)
with device:
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.model), dtype=dtype)
if a.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
if a.method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    if a.gradient_checkpointing:
        model.enable_input_require_grads()
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
print(json.dumps({"baseline": "plain", "method": a.method, "batch": a.batch, "seq": a.seq, "steps": a.steps,
                  "step_time_s": round(step, 4), "tokens_per_s": round(a.batch * a.seq / step, 1),
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if gpu else None,
                  "device": torch.cuda.get_device_name() if gpu else "cpu"}), flush=True)
