#!/usr/bin/env bash
# Preemption → training resumed: a 2-node ddp-regression job (real torch.distributed, gloo, CPU)
# on the local provider, whose node 1 is preempted as spot would be (providers.local
# preemptAfterSeconds) once checkpoints exist. Prints, from the state database and the nodes' logs:
# preempted (the moment the switch fires; the controller sees it at its next describe, every 5 s)
# → failure detected → replacement running (boot) → attempt 2 started → its training process up
# (it loads the checkpoint next). Run once with warm capacity (boot 0 s) and once with a
# booting replacement (boot 8 s), so boot time is reported apart.
#   scripts/bench-preemption.sh            (builds capstan first)
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product capstan >/dev/null
bin="$(swift build --show-bin-path)/capstan"
scripts/install-torch.sh >/dev/null
out="$(mktemp -d /tmp/capstan-bench-preempt.XXXXXX)"
trap 'rm -rf "$out"' EXIT

run() { # boot seconds
  local boot="$1" home="$out/home-$1" work="$out/work-$1"
  mkdir -p "$home" "$work"
  cp examples/ddp-regression/train.py "$work/"
  cat >"$home/config.yaml" <<EOF
providers:
  local:
    slots: 4
    bootSeconds: $boot
    preemptAfterSeconds: 20
    preemptNodes: [1]
EOF
  cat >"$work/job.yaml" <<EOF
name: preempt-bench
resources:
  nodes: 2
workdir: .
env:
  TOTAL_STEPS: "400"
  CKPT_EVERY: "10"
  STEP_SLEEP: "0.05"
  GLOO_SOCKET_IFNAME: lo
run: >-
  python3 -m torch.distributed.run --nnodes=\$NNODES --node-rank=\$NODE_RANK
  --nproc-per-node=\$NPROC_PER_NODE --master-addr=\$MASTER_ADDR --master-port=\$MASTER_PORT
  train.py
checkpoint:
  keep: 3
maxRestarts: 3
EOF
  CAPSTAN_HOME="$home" "$bin" launch "$work/job.yaml" --quiet --heartbeat-timeout 20 >"$out/launch-$boot.log" 2>&1 || {
    echo "the job failed (boot $boot s):"; tail -20 "$out/launch-$boot.log"; exit 1; }
  python3 - "$home" "$boot" <<'PY'
import glob, json, os, sqlite3, sys
from datetime import datetime, timezone
home, boot = sys.argv[1], float(sys.argv[2])
def ts(v):  # GRDB stores dates as "YYYY-MM-DD HH:MM:SS.SSS" (UTC)
    return datetime.strptime(v, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
db = sqlite3.connect(os.path.join(home, "state/capstan.db"))
job_id, status, attempts = db.execute("SELECT id, status, attempt FROM job").fetchone()
rows = {a: (ts(s), e and ts(e), r) for a, s, e, r in db.execute("SELECT attempt, startedAt, endedAt, resumeStep FROM jobAttempt")}
pre, repl_launch = None, None
for f in glob.glob(os.path.join(home, "local/nodes/*/instance.json")):
    i = json.load(open(f))
    if i.get("details", {}).get("preemptedAt"): pre = float(i["details"]["preemptedAt"])
for f in glob.glob(os.path.join(home, "local/nodes/*/instance.json")):
    i = json.load(open(f))
    if i["tags"].get("capstan:node") == "1" and not i.get("details", {}).get("preemptedAt"):
        repl_launch = i.get("launchedAt")
starts = []
for f in glob.glob(os.path.join(home, "jobs", job_id, "logs", "node-*.log")):
    for line in open(f, errors="replace"):
        line = line.strip()
        if line.startswith("{") and '"event": "start"' in line:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("attempt") == 2: starts.append(e["time"])
if pre is None or 2 not in rows or not starts:
    print(f"  boot {boot:.0f} s: no preemption seen (job {status}, {attempts} attempt(s))"); sys.exit(1)
ended1 = rows[1][1]; start2 = rows[2][0]; py2 = max(starts)
repl = datetime.fromisoformat(repl_launch.replace("Z", "+00:00")).timestamp() + boot if isinstance(repl_launch, str) else None
print(f"  boot {boot:4.0f} s  job {status}, {attempts} attempts, attempt 2 resumed from step {rows[2][2]}")
print(f"    preempted → attempt 1 closed (detected, gang stopped)  {ended1 - pre:6.1f} s")
if repl: print(f"    preempted → replacement running (launch + boot)        {repl - pre:6.1f} s")
print(f"    preempted → attempt 2 started on the nodes             {start2 - pre:6.1f} s")
print(f"    preempted → training processes up again (resume)       {py2 - pre:6.1f} s")
print(f"      of which boot (reported apart)                        {boot:6.1f} s")
print(f"      without boot                                          {py2 - pre - boot:6.1f} s   (goal < 30 s)")
PY
}

echo "Preemption → training resumed (2-node ddp-regression, local provider, node 1 preempted 20 s after it runs)"
run 0
run 8
