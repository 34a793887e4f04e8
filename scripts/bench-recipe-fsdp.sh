#!/usr/bin/env bash
# The sft recipe under FSDP2 vs a bare FSDP2 loop, on this machine's CPUs (gloo), interleaved:
#   recipe: Sources/Trainer/Recipes/sft.py under torchrun (`parallelism: fsdp`, the real data
#           pipeline, metrics, and its sharded checkpoint at the end), full fine-tune;
#   plain:  Benchmarks/recipe/plain_sft.py --fsdp under torchrun (same model, batch, sequence
#           length, AdamW, clipping, full-length random batches, nothing else).
# Prints each run's whole-job tokens/s and the ratio of the means (goal >= 0.98).
# Env: PYTHON (with torch, transformers, peft; default: the test venv or python3) SHAPE=tiny
# PROCS=2 BATCH=4 SEQ=256 STEPS=30 RUNS=2 METHOD=full
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-tiny}; PROCS=${PROCS:-2}; BATCH=${BATCH:-4}; SEQ=${SEQ:-256}; STEPS=${STEPS:-30}; RUNS=${RUNS:-2}; METHOD=${METHOD:-full}
# Default: a finished venv of the recipe tests (ready marker, transformers and peft import).
py=${PYTHON:-}
if [ -z "$py" ]; then
  for v in "${TMPDIR:-/tmp}"/capstan-test-python/*/; do
    [ -f "$v/.capstan-ready" ] && "$v/bin/python" -c 'import transformers, peft' 2>/dev/null && { py="$v/bin/python"; break; }
  done
fi
py=${py:-python3}
work=$(mktemp -d /tmp/capstan-bench-fsdp.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
"$py" Benchmarks/recipe/make_model.py "$SHAPE" "$work/m" "$SEQ" 256 >/dev/null
cat > "$work/sft.json" <<JSON
{"model": "$work/m/model", "data": "$work/m/data.jsonl", "init": "random", "method": "$METHOD", "parallelism": "fsdp",
 "steps": $STEPS, "batch_size": $BATCH, "seq_len": $SEQ, "log_every": 5, "checkpoint_every": 100000, "shuffle": false}
JSON
port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
echo "== FSDP2 on CPU: $SHAPE, $METHOD, $PROCS processes, batch $BATCH, seq $SEQ, $STEPS steps, $RUNS interleaved runs"
rec=(); plain=()
for i in $(seq 1 "$RUNS"); do
  CAPSTAN_CHECKPOINT_DIR="$work/ck-$i" CAPSTAN_OUTPUT_DIR="$work/out-$i" "$py" -m torch.distributed.run --nproc-per-node="$PROCS" \
    --master-addr=127.0.0.1 --master-port="$(port)" Sources/Trainer/Recipes/sft.py --config "$work/sft.json" 2>/dev/null > "$work/recipe-$i.log"
  rec+=("$("$py" -c '
import json, sys
v = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if l.startswith("{\"step\"") and json.loads(l)["step"] > 10]
print(round(sum(v) / len(v), 1))' "$work/recipe-$i.log")")
  p=$("$py" -m torch.distributed.run --nproc-per-node="$PROCS" --master-addr=127.0.0.1 --master-port="$(port)" \
    Benchmarks/recipe/plain_sft.py "$work/m/model" --fsdp --method "$METHOD" --batch "$BATCH" --seq "$SEQ" --steps "$((STEPS - 10))" --warmup 10 2>/dev/null | grep '^{' | tail -1)
  plain+=("$("$py" -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "$p")")
  echo "  run $i: recipe ${rec[-1]} tok/s, plain FSDP loop ${plain[-1]} tok/s"
done
"$py" - "${rec[*]}" "${plain[*]}" <<'PY'
import sys
c = [float(x) for x in sys.argv[1].split()]; p = [float(x) for x in sys.argv[2].split()]
mc, mp = sum(c) / len(c), sum(p) / len(p)
print(f"  mean: recipe {mc:.1f} tok/s, plain FSDP loop {mp:.1f} tok/s -> {mc / mp:.3f}x")
PY
