"""Checkpoint-stall probe: a fixed-work training loop (one thread, so another core is free for
the agent) that writes a CKPT_MB checkpoint every CKPT_EVERY steps into
$CAPSTAN_CHECKPOINT_DIR/step-N/ (marked .done). Prints one JSON line at the end: every step's
duration and how long each checkpoint write (the job's own cost) took. Run plain (nothing
uploads) and under `capstan launch` (the agent uploads each checkpoint while the loop goes on):
the difference in step times is what the uploads cost the loop."""
import json, os, time
import torch

torch.set_num_threads(1)
steps, every, mb = int(os.environ.get("STEPS", "240")), int(os.environ.get("CKPT_EVERY", "60")), int(os.environ.get("CKPT_MB", "256"))
ckpt = os.environ["CAPSTAN_CHECKPOINT_DIR"]
a, b = torch.randn(384, 384), torch.randn(384, 384)
state = torch.randn(mb * 1024 * 1024 // 4)
durations, writes = [], []
for step in range(1, steps + 1):
    t = time.perf_counter()
    for _ in range(8):
        c = a @ b
    durations.append(time.perf_counter() - t)
    if step % every == 0:
        w = time.perf_counter()
        d = os.path.join(ckpt, f"step-{step}")
        os.makedirs(d, exist_ok=True)
        torch.save({"state": state, "step": step}, os.path.join(d, "state.pt"))
        open(os.path.join(d, ".done"), "w").close()
        writes.append(time.perf_counter() - w)
print(json.dumps({"stall_probe": True, "durations": durations, "writes": writes, "every": every}), flush=True)
