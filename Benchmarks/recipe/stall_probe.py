"""The recipe's checkpoint stall on a model's full weights, against the naive way, in one
process (DESIGN.md's anchor: 8B bf16 = 16 GB; naive ~22 s, pinned floor ~0.3 s on an H200).

    python3 stall_probe.py SFT_PY MODEL_DIR OUT_DIR

Naive: state_dict tensors .to("cpu") (pageable) then safetensors save_file, in the loop.
Recipe: sft.py's Checkpointer (torch.distributed.checkpoint async save): save() = the stall
(staging copy into pinned, reused buffers); the write runs on its thread while a matmul loop
runs, whose speed is compared with the same loop alone. Prints JSON lines.
"""
import importlib.util
import json
import os
import shutil
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sft_path, model_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("sft", sft_path)
sft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sft)
gpu = torch.cuda.is_available()
device = torch.device("cuda" if gpu else "cpu")
dtype = torch.bfloat16 if gpu else torch.float32
with device:
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
weights = {k: v for k, v in model.state_dict().items()}
size = sum(t.numel() * t.element_size() for t in weights.values())
os.makedirs(out, exist_ok=True)


def sync():
    if gpu:
        torch.cuda.synchronize()


def matmuls(n):
    a = torch.randn(4096 if gpu else 512, 4096 if gpu else 512, device=device, dtype=dtype)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        a = (a @ a).clamp_(-1, 1)
    sync()
    return time.perf_counter() - t


emit = lambda o: print(json.dumps(o), flush=True)
emit({"event": "state", "bytes": size, "gib": round(size / 2**30, 2), "device": torch.cuda.get_device_name() if gpu else "cpu"})

# Naive: everything in the loop.
sync()
t0 = time.perf_counter()
cpu = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
t1 = time.perf_counter()
from safetensors.torch import save_file
save_file(cpu, os.path.join(out, "naive.safetensors"))
t2 = time.perf_counter()
del cpu
os.remove(os.path.join(out, "naive.safetensors"))
emit({"event": "naive", "copy_s": round(t1 - t0, 3), "write_s": round(t2 - t1, 3), "stall_s": round(t2 - t0, 3)})

# The recipe's Checkpointer: torch.distributed.checkpoint's async save (staged into pinned,
# reused host buffers on GPU, written on a thread). The first save allocates the buffers; the
# second is the steady-state stall a run pays at every checkpoint.
ck = sft.Checkpointer(os.path.join(out, "ck"), 0, 0, 1, gpu)
n = 200 if gpu else 20
alone = matmuls(n)
for step in (1, 2):
    r = ck.save(step, {"model": weights}, {"step": step}, {"torch": torch.get_rng_state()})
    w0 = time.perf_counter()
    during = matmuls(n)
    ck.wait()
    emit({"event": "recipe", "save": step, "stall_s": round(r["stall_s"], 4), "background_write_s": round(time.perf_counter() - w0, 3),
          "matmul_alone_s": round(alone, 3), "matmul_during_write_s": round(during, 3),
          "slowdown": round(during / alone, 3), "note": "first save allocates the staging buffers" if step == 1 else "steady state"})
ck.close()
shutil.rmtree(out, ignore_errors=True)
