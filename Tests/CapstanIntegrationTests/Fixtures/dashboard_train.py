"""A slow, real torch.distributed (gloo, CPU) job for the dashboard's browser test: DDP linear
regression, one metrics line per step from rank 0 (`{"step", "loss", "lr", "tokens_per_s",
"total_steps"}`), a plain log line per step from the other ranks, a checkpoint every CKPT_EVERY
steps (Capstan's protocol: step-N/ with `.done`), resumed from $CAPSTAN_RESUME_DIR.
Knobs (env): TOTAL_STEPS, CKPT_EVERY, STEP_SLEEP.
"""
import json
import os
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = int(os.environ.get("TOTAL_STEPS", "3000"))
every = int(os.environ.get("CKPT_EVERY", "25"))
pause = float(os.environ.get("STEP_SLEEP", "0.2"))
ckpt_dir = os.environ["CAPSTAN_CHECKPOINT_DIR"]
attempt = int(os.environ.get("CAPSTAN_ATTEMPT", "1"))

torch.manual_seed(0)
model = torch.nn.Linear(16, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.02)
start = 0
resume = os.environ.get("CAPSTAN_RESUME_DIR")
if resume:
    state = torch.load(os.path.join(resume, "state.pt"))
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start = state["step"]
ddp = torch.nn.parallel.DistributedDataParallel(model)
w_true = torch.arange(16, dtype=torch.float32) / 16
print(f"rank {rank}/{world}: training steps {start + 1}..{total}", flush=True)

last = time.perf_counter()
for step in range(start + 1, total + 1):
    g = torch.Generator().manual_seed(step * 100 + rank)
    x = torch.randn(64, 16, generator=g)
    loss = ((ddp(x).squeeze(-1) - x @ w_true) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    now = time.perf_counter()
    if rank == 0:
        print(json.dumps({"step": step, "loss": round(loss.item(), 6), "lr": 0.02, "tokens_per_s": round(64 * 16 * world / (now - last), 1),
                          "total_steps": total, "attempt": attempt}), flush=True)
    else:
        print(f"rank {rank}: step {step} local loss {loss.item():.5f}", flush=True)
    last = now
    if step % every == 0 or step == total:
        folder = os.path.join(ckpt_dir, f"step-{step}")
        os.makedirs(folder, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, os.path.join(folder, "state.pt"))
        open(os.path.join(folder, ".done"), "w").close()
    time.sleep(pause)

dist.barrier()
dist.destroy_process_group()
