#!/usr/bin/env bash
# Job benchmarks (issue: trainer). Builds capstan (release), then on warm local capacity:
#  1. launch overhead: `capstan launch` → the training command's first line, on 2 nodes,
#     side by side with starting the same two torchrun commands by hand (RUNS each, medians);
#  2. checkpoint stall: the loop's step times with the agent uploading 256 MiB checkpoints in
#     the background, side by side with the same loop run plain (nothing uploads).
# Usage: scripts/bench-jobs.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
scripts/install-torch.sh
swift build -c release --product capstan >/dev/null
CAPSTAN="$PWD/.build/release/capstan"
work="$(mktemp -d /tmp/capstan-bench-jobs.XXXXXX)"
export CAPSTAN_HOME="$work/home"
trap '"$CAPSTAN" down warm >/dev/null 2>&1 || true; "$CAPSTAN" down warm1 >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/job"
cp examples/ddp-regression/train.py Benchmarks/jobs/stall.py "$work/job/"
TORCHRUN='python3 -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK --nproc-per-node=$NPROC_PER_NODE --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py'
cat > "$work/job/job.yaml" <<YAML
name: bench
resources: {nodes: 2}
workdir: .
env: {TOTAL_STEPS: "3", CKPT_EVERY: "100", STEP_SLEEP: "0", GLOO_SOCKET_IFNAME: lo}
run: $TORCHRUN
YAML
"$CAPSTAN" up warm --nodes 2 >/dev/null
now() { python3 -c 'import time; print(time.time())'; }
first_line() { # the latest of the nodes' first-line times in the given files
  python3 - "$@" <<'PY'
import json, sys
ts = []
for f in sys.argv[1:]:
    for line in open(f, errors="replace"):
        line = line.strip()
        if line.startswith('{"event": "start"'):
            ts.append(json.loads(line)["time"]); break
print(max(ts))
PY
}
last_job() { "$CAPSTAN" jobs --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])'; }
# compare SPEC HAND GOAL: RUNS × (`capstan launch SPEC` on the warm cluster, then the function
# HAND, which starts the same command on both nodes by hand and writes hand-0.log, hand-1.log),
# interleaved; prints medians and the overhead (GOAL: also the ratio against the ≤ 1.1× goal).
compare() {
  local spec=$1 hand=$2 goal=$3 capstan_s=() hand_s=() t0 t1 job
  for i in $(seq "$RUNS"); do
    t0=$(now)
    "$CAPSTAN" launch "$spec" --cluster warm --quiet >/dev/null
    job=$(last_job)
    t1=$(first_line "$CAPSTAN_HOME/jobs/$job/logs/node-0.log" "$CAPSTAN_HOME/jobs/$job/logs/node-1.log")
    capstan_s+=("$(python3 -c "print($t1-$t0)")")
    t0=$(now)
    "$hand"
    t1=$(first_line "$work/hand-0.log" "$work/hand-1.log")
    hand_s+=("$(python3 -c "print($t1-$t0)")")
  done
  python3 - "${capstan_s[*]}" "${hand_s[*]}" "$goal" <<'PY'
import statistics, sys
c = [float(x) for x in sys.argv[1].split()]; h = [float(x) for x in sys.argv[2].split()]
mc, mh = statistics.median(c), statistics.median(h)
print(f"  capstan launch (warm cluster): median {mc*1000:.0f} ms  (runs: {', '.join(f'{x*1000:.0f}' for x in c)})")
print(f"  by hand:                       median {mh*1000:.0f} ms  (runs: {', '.join(f'{x*1000:.0f}' for x in h)})")
print(f"  overhead {1000*(mc-mh):.0f} ms" + (f", ratio {mc/mh:.2f}x (goal <= 1.10x, < 1000 ms)" if sys.argv[3] == "goal" else ""))
PY
}

# By hand: the same torchrun command on both nodes' addresses, two processes.
torchrun_by_hand() {
  local port=$((30000 + RANDOM % 10000))
  for rank in 0 1; do
    ( cd "$work/job" && env NNODES=2 NODE_RANK=$rank NPROC_PER_NODE=1 MASTER_ADDR=127.0.0.2 MASTER_PORT=$port \
        CAPSTAN_CHECKPOINT_DIR="$work/hand-$rank/ckpt" CAPSTAN_OUTPUT_DIR="$work/hand-$rank/out" TOTAL_STEPS=3 CKPT_EVERY=100 STEP_SLEEP=0 GLOO_SOCKET_IFNAME=lo \
        sh -c "mkdir -p \$CAPSTAN_CHECKPOINT_DIR && $TORCHRUN" > "$work/hand-$rank.log" 2>&1 ) &
  done
  wait
}
echo "launch → first training line, 2 nodes (torchrun, gloo), $RUNS runs each"
compare "$work/job/job.yaml" torchrun_by_hand goal

echo "control plane alone: launch → first line of a command that prints at once (python3 -c), 2 nodes, $RUNS runs each"
PROBE='python3 -c "import json,time; print(json.dumps({\"event\": \"start\", \"time\": time.time()}))"'
cat > "$work/job/probe.yaml" <<YAML
name: probe
resources: {nodes: 2}
workdir: .
run: '$PROBE'
YAML
probe_by_hand() {
  for rank in 0 1; do ( cd "$work/job" && sh -c "$PROBE" > "$work/hand-$rank.log" 2>&1 ) & done
  wait
}
compare "$work/job/probe.yaml" probe_by_hand -

echo "checkpoint stall: 480 steps, a 256 MiB checkpoint every 120 steps, 1 node, file:// bucket"
cat > "$work/job/stall.yaml" <<YAML
name: stall
resources: {nodes: 1}
workdir: .
run: python3 stall.py
env: {STEPS: "480", CKPT_EVERY: "120"}
checkpoint: {keep: 2}
YAML
"$CAPSTAN" up warm1 --nodes 1 >/dev/null
mkdir -p "$work/plain/ckpt"
( cd "$work/job" && STEPS=480 CKPT_EVERY=120 CAPSTAN_CHECKPOINT_DIR="$work/plain/ckpt" python3 stall.py ) | grep stall_probe > "$work/plain.json"
"$CAPSTAN" launch "$work/job/stall.yaml" --cluster warm1 --quiet >/dev/null
job=$(last_job)
grep -h stall_probe "$CAPSTAN_HOME/jobs/$job/logs/node-0.log" > "$work/capstan.json"
grep -h "uploaded in" "$CAPSTAN_HOME/jobs/$job/logs/node-0.log" | sed 's/^.*\] /  agent: /'
python3 - "$work/plain.json" "$work/capstan.json" <<'PY'
import json, statistics, sys
p, c = (json.loads(open(f).read()) for f in sys.argv[1:3])
every = p["every"]
def window(d):  # every step after the first checkpoint: uploads run during these
    return [x for i, x in enumerate(d) if i + 1 > every]
for name, r in (("plain (no uploads)", p), ("under capstan (agent uploads)", c)):
    w = window(r["durations"])
    print(f"  {name:31s} step median {statistics.median(r['durations'])*1000:.2f} ms, after-checkpoint window mean {statistics.mean(w)*1000:.2f} ms, max {max(w)*1000:.1f} ms; checkpoint writes {', '.join(f'{x:.2f}' for x in r['writes'])} s")
wp, wc = window(p["durations"]), window(c["durations"])
extra = sum(wc) - sum(wp)
per = extra / max(1, len(c["writes"]) - 1)
print(f"  loop time during uploads: {sum(wc)/sum(wp):.3f}x plain; extra {extra*1000:.0f} ms over {len(c['writes'])-1} uploads = {per*1000:.0f} ms per 256 MiB checkpoint (the loop never waits on the upload; this is CPU shared on {__import__('os').cpu_count()} cores)")
PY
