"""A small but real torch.distributed (gloo, CPU) training program that follows Capstan's
checkpoint protocol: DDP linear regression, one JSON line per step, a checkpoint every
CKPT_EVERY steps written to $CAPSTAN_CHECKPOINT_DIR/step-N/ and marked complete with `.done`,
resumed from $CAPSTAN_RESUME_DIR, final weights to $CAPSTAN_OUTPUT_DIR.

Run it under torchrun (see job.yaml). Knobs (env): TOTAL_STEPS, CKPT_EVERY, STEP_SLEEP,
FAIL_WITH (exit with this code at once: a job that is broken), and for fault tests HOLD_AT
("attempt:step[,attempt:step...]"): after that step (and its checkpoint) every rank waits until
the file $HOLD_RELEASE-<attempt>-<step> exists, so a test breaks the job at a known step instead
of racing it.
"""
import json
import os
import sys
import time

# The first line, before the heavy imports: the benchmark times launch → this line.
print(json.dumps({"event": "start", "time": time.time(), "node": int(os.environ.get("NODE_RANK", "0")),
                  "attempt": int(os.environ.get("CAPSTAN_ATTEMPT", "1"))}), flush=True)
if os.environ.get("FAIL_WITH"):
    print("simulated bug: exiting with", os.environ["FAIL_WITH"], file=sys.stderr, flush=True)
    sys.exit(int(os.environ["FAIL_WITH"]))

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
attempt = int(os.environ.get("CAPSTAN_ATTEMPT", "1"))
ckpt_dir = os.environ["CAPSTAN_CHECKPOINT_DIR"]
# For fault tests: where to find this worker's pid.
with open(os.path.join(os.path.dirname(ckpt_dir), f"worker-{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))

total = int(os.environ.get("TOTAL_STEPS", "60"))
every = int(os.environ.get("CKPT_EVERY", "10"))
pause = float(os.environ.get("STEP_SLEEP", "0.05"))
holds = {tuple(int(x) for x in h.split(":")) for h in os.environ.get("HOLD_AT", "").split(",") if h}

torch.manual_seed(0)
model = torch.nn.Linear(16, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
start = 0
resume = os.environ.get("CAPSTAN_RESUME_DIR")
if resume:
    state = torch.load(os.path.join(resume, "state.pt"))
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start = state["step"]
    print(json.dumps({"event": "resumed", "step": start, "rank": rank, "attempt": attempt}), flush=True)
ddp = torch.nn.parallel.DistributedDataParallel(model)
w_true = torch.arange(16, dtype=torch.float32) / 16
loss = None  # stays None when resuming from the last step: nothing is left to train

for step in range(start + 1, total + 1):
    g = torch.Generator().manual_seed(step * 100 + rank)  # the data of a step never depends on the attempt
    x = torch.randn(64, 16, generator=g)
    loss = ((ddp(x).squeeze(-1) - x @ w_true) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(json.dumps({"step": step, "loss": round(loss.item(), 6), "rank": rank, "attempt": attempt}), flush=True)
    if step % every == 0 or step == total:
        folder = os.path.join(ckpt_dir, f"step-{step}")
        os.makedirs(folder, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, os.path.join(folder, "state.pt"))
        open(os.path.join(folder, ".done"), "w").close()  # complete: the agent may upload it
    if (attempt, step) in holds:
        release = f"{os.environ['HOLD_RELEASE']}-{attempt}-{step}"
        print(json.dumps({"event": "hold", "step": step, "rank": rank, "attempt": attempt, "until": release}), flush=True)
        while not os.path.exists(release):
            time.sleep(0.05)
    time.sleep(pause)

if rank == 0:
    out = os.environ["CAPSTAN_OUTPUT_DIR"]
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"steps": total, "final_loss": None if loss is None else loss.item(), "world": world}, f)
dist.barrier()
dist.destroy_process_group()
