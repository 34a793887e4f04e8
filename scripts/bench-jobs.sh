#!/usr/bin/env bash
# Job benchmarks (issue: trainer). Builds capstan (release), then on warm local capacity:
#  1. launch overhead: `capstan launch` → the training command's first line, on 2 nodes,
#     side by side with starting the same two torchrun commands by hand (RUNS each, medians,
#     interleaved). The command first prints a timestamp, so the time splits into reaching the
#     command (Capstan's part) and torchrun's own start-up (which varies by ±0.3 s run to run);
#  2. checkpoint stall: the loop's step times with the agent uploading 256 MiB checkpoints in
#     the background, side by side with the same loop run plain (nothing uploads).
# Usage: scripts/bench-jobs.sh [RUNS]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/launch-times.sh
. scripts/lib/launch-times.sh
RUNS="${1:-15}"
scripts/install-torch.sh
swift build -c release --product capstan >/dev/null
CAPSTAN="$PWD/.build/release/capstan"
work="$(mktemp -d /tmp/capstan-bench-jobs.XXXXXX)"
export CAPSTAN_HOME="$work/home"
trap '"$CAPSTAN" down --force warm >/dev/null 2>&1 || true; "$CAPSTAN" down --force warm1 >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/job"
cp examples/ddp-regression/train.py Benchmarks/jobs/stall.py "$work/job/"
cat > "$work/job/job.yaml" <<YAML
name: bench
resources: {nodes: 2}
workdir: .
env: {TOTAL_STEPS: "3", CKPT_EVERY: "100", STEP_SLEEP: "0", GLOO_SOCKET_IFNAME: lo}
run: $STAMP; $TORCHRUN
YAML
"$CAPSTAN" up warm --nodes 2 >/dev/null
# By hand: the same command on both nodes' addresses, two processes.
by_hand() {
  local port=$((30000 + RANDOM % 10000))
  for rank in 0 1; do
    ( cd "$work/job" && env NNODES=2 NODE_RANK=$rank NPROC_PER_NODE=1 MASTER_ADDR=127.0.0.2 MASTER_PORT=$port \
        CAPSTAN_CHECKPOINT_DIR="$work/hand-$rank/ckpt" CAPSTAN_OUTPUT_DIR="$work/hand-$rank/out" TOTAL_STEPS=3 CKPT_EVERY=100 STEP_SLEEP=0 GLOO_SOCKET_IFNAME=lo \
        sh -c "mkdir -p \$CAPSTAN_CHECKPOINT_DIR && $STAMP; $TORCHRUN" > "$work/hand-$rank.log" 2>&1 ) &
  done
  wait
}
echo "launch → first training line, 2 nodes (torchrun, gloo), $RUNS runs each, interleaved"
compare_launches "$RUNS" "$work/job/job.yaml" 'capstan launch (warm cluster)' 'by hand' 1

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
