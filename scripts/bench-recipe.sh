#!/usr/bin/env bash
# The sft recipe's figures, each against a baseline run here in the same script:
#   1. tokens/s of the recipe under `capstan launch` (1 local node, torchrun, the env contract,
#      checkpoints on) vs Benchmarks/recipe/plain_sft.py (a bare loop on the same model, method,
#      dtype, batch and sequence length), interleaved: capstan, plain, capstan, plain;
#   2. checkpoint stall of a full fine-tune: the recipe's background checkpoints (snapshot into
#      reused, pinned-on-GPU buffers, written on a thread) vs checkpointMode sync (the naive way:
#      copy to pageable memory and write in the loop).
# Env knobs (defaults: a CPU-sized run): SHAPE=tiny|llama-1b|llama-8b METHOD=lora BATCH=4 SEQ=256
# STEPS=40 RANK=16 STALL_SHAPE=$SHAPE STALL_BATCH=$BATCH STALL_STEPS=30 STALL_EVERY=10 RUNS=2
# SKIP_SYNC=1 (GPU: the naive figure is DESIGN.md's) CAPSTAN_BIN=path GRAD_CKPT=1 STALL_GRAD_CKPT=1
# PYTHON=system (no venv: the node's python3 has torch, transformers, peft) OUT=folder (kept).
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-tiny}; METHOD=${METHOD:-lora}; BATCH=${BATCH:-4}; SEQ=${SEQ:-256}; STEPS=${STEPS:-40}; RANK=${RANK:-16}
STALL_SHAPE=${STALL_SHAPE:-$SHAPE}; STALL_BATCH=${STALL_BATCH:-$BATCH}; STALL_STEPS=${STALL_STEPS:-30}; STALL_EVERY=${STALL_EVERY:-10}
RUNS=${RUNS:-2}; GRAD_CKPT=${GRAD_CKPT:-0}
bin=${CAPSTAN_BIN:-}
if [ -z "$bin" ]; then
  swift build -c release --product capstan >/dev/null
  bin="$(swift build -c release --show-bin-path)/capstan"
fi
work=$(mktemp -d /tmp/capstan-bench-recipe.XXXXXX)
trap 'rm -rf "$work"' EXIT
OUT_GIVEN=${OUT:-}; OUT=${OUT:-$work/out}; mkdir -p "$OUT"
export CAPSTAN_HOME="$work/home"
STALL_GRAD_CKPT=${STALL_GRAD_CKPT:-$GRAD_CKPT}
# PYTHON=system: the node's python3 as it is (an image with torch, transformers and peft).
python_line=$([ "${PYTHON:-venv}" = system ] && echo "python: system" || echo "")

# job NAME SHAPE_DIR METHOD BATCH STEPS EVERY MODE GRAD_CKPT → runs it, the node log in $OUT/NAME.log
job() {
  local name=$1 dir=$2 method=$3 batch=$4 steps=$5 every=$6 mode=$7
  local gc; gc=$([ "$8" = 1 ] && echo true || echo false)
  cat > "$dir/$name.yaml" <<YAML
name: $name
resources: {nodes: 1}
workdir: .
recipe: sft
model: model
data: data.jsonl
train: {method: $method, init: random, steps: $steps, batchSize: $batch, seqLen: $SEQ, loraRank: $RANK, loraAlpha: $((RANK * 2)), checkpointEvery: $every, logEvery: 5, checkpointMode: $mode, gradientCheckpointing: $gc}
env: {GLOO_SOCKET_IFNAME: lo}
checkpoint: {keep: 2}
maxRestarts: 0
storage: file://$work/bucket
$python_line
YAML
  "$bin" launch "$dir/$name.yaml" --quiet >/dev/null 2>&1 || { echo "job $name failed:"; "$bin" logs "$name" | tail -30; exit 1; }
  "$bin" logs "$name" > "$OUT/$name.log"
}
# The mean tokens/s of a node log's metric lines after the first 10 steps.
tps() { python3 -c '
import json, sys
v = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if l.startswith("{\"step\"") and json.loads(l)["step"] > 10]
print(round(sum(v) / len(v), 1))' "$1"; }

python3 Benchmarks/recipe/make_model.py "$SHAPE" "$work/m" "$SEQ" 64 >/dev/null
echo "== throughput: $SHAPE, $METHOD (r$RANK), batch $BATCH, seq $SEQ, $STEPS steps, $RUNS interleaved runs each"
py=""
cap=(); plain=()
for i in $(seq 1 "$RUNS"); do
  job "tput-$i" "$work/m" "$METHOD" "$BATCH" "$STEPS" "$STEPS" background "$GRAD_CKPT"
  if [ -z "$py" ]; then
    venv=$(sed -n 's/.*python env [0-9a-f]*: \(building\|cached\) in \([^ ]*\).*/\2/p' "$OUT/tput-$i.log" | head -1)
    py=$([ -n "$venv" ] && echo "$venv/bin/python" || echo python3)
  fi
  cap+=("$(tps "$OUT/tput-$i.log")")
  p=$("$py" Benchmarks/recipe/plain_sft.py "$work/m/model" --method "$METHOD" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup 3 --lora-rank "$RANK" $([ "$GRAD_CKPT" = 1 ] && echo --gradient-checkpointing) 2>/dev/null | tail -1)
  echo "$p" >> "$OUT/plain.jsonl"
  plain+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "$p")")
  echo "  run $i: capstan recipe ${cap[-1]} tok/s, plain loop ${plain[-1]} tok/s"
done
python3 - "${cap[*]}" "${plain[*]}" <<'PY'
import sys
c = [float(x) for x in sys.argv[1].split()]; p = [float(x) for x in sys.argv[2].split()]
mc, mp = sum(c) / len(c), sum(p) / len(p)
print(f"  mean: capstan recipe {mc:.1f} tok/s, plain loop {mp:.1f} tok/s -> {mc / mp:.3f}x")
PY

echo "== checkpoint stall: full fine-tune of $STALL_SHAPE, batch $STALL_BATCH, a checkpoint every $STALL_EVERY of $STALL_STEPS steps"
if [ "$STALL_SHAPE" != "$SHAPE" ]; then python3 Benchmarks/recipe/make_model.py "$STALL_SHAPE" "$work/s" "$SEQ" 64 >/dev/null; sdir="$work/s"; else sdir="$work/m"; fi
modes="background"; [ "${SKIP_SYNC:-0}" = 1 ] || modes="background sync"
for mode in $modes; do
  job "stall-$mode" "$sdir" full "$STALL_BATCH" "$STALL_STEPS" "$STALL_EVERY" "$mode" "$STALL_GRAD_CKPT"
  python3 - "$OUT/stall-$mode.log" "$mode" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ck = [l for l in lines if l.get("event") == "checkpoint"]
wr = [l for l in lines if l.get("event") == "checkpoint_written"]
steps = [l["step_time_s"] for l in lines if "step_time_s" in l and l["step"] > 10]
size = max((w["bytes"] for w in wr), default=0)
stalls = ", ".join("%.3f" % c["stall_s"] for c in ck)
writes = ", ".join("%.2f" % w["write_s"] for w in wr)
print("  %-10s: stall per checkpoint %s s (max %.3f); write %s s; state %.1f MiB; mean step %.4f s" % (
    sys.argv[2], stalls, max(c["stall_s"] for c in ck), writes, size / 2**20, sum(steps) / max(1, len(steps))))
PY
done
[ -n "$OUT_GIVEN" ] && echo "(logs and figures in $OUT)" || true
