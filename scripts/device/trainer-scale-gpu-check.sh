#!/usr/bin/env bash
# Real-GPU check of issue 18 (FSDP2 + sharded async checkpoints), one device call, on a GPU
# machine with PyTorch, transformers and peft (no Swift, no network needed):
#   run(command: "scripts/device/trainer-scale-gpu-check.sh", timeout_s: 540)
# Figures, each against its baseline in this same call, on the same GPU and model shape:
#   1. Llama-8B shape full fine-tune, FSDP2 (one process), bf16, activation checkpointing,
#      seq 2048, batch 1: the recipe (Sources/Trainer/Recipes/sft.py under torchrun,
#      parallelism fsdp) vs the bare loop (Benchmarks/recipe/plain_sft.py --fsdp
#      --gradient-checkpointing). Anchor: bare full+GC 7,924 tok/s on one H200. Goal >= 0.98x.
#   2. Llama-8B shape LoRA r16 under FSDP2, bf16, seq 2048, batch 4: recipe vs bare loop.
#      Anchor 9,230 tok/s.
#   3. Checkpoint stall of the 8B weights (16 GB bf16): the recipe's Checkpointer (DCP async
#      save, pinned reused staging buffers; first save allocates them, second is steady state)
#      vs naive copy-to-pageable + write in the loop. Anchor: naive 22 s, pinned floor 0.29 s;
#      goal <= 1 s.
# Output in $OUT (default /tmp/out): *.jsonl per part, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
dir=/tmp/capstan-scale-check; mkdir -p "$dir"
export OMP_NUM_THREADS=8
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' | tee "$OUT/versions.txt"
python3 Benchmarks/recipe/make_model.py llama-8b "$dir/8b" 2048 64 >/dev/null

# recipe METHOD BATCH GC STEPS NAME -> mean tokens/s after the first 3 steps
recipe() {
  cat > "$dir/$5.json" <<JSON
{"model": "$dir/8b/model", "data": "$dir/8b/data.jsonl", "init": "random", "method": "$1", "parallelism": "fsdp",
 "dtype": "bf16", "steps": $4, "batch_size": $2, "seq_len": 2048, "log_every": 1, "checkpoint_every": 100000,
 "gradient_checkpointing": $3, "shuffle": false}
JSON
  CAPSTAN_CHECKPOINT_DIR="$dir/ck-$5" CAPSTAN_OUTPUT_DIR="$dir/out-$5" timeout 200 python3 -m torch.distributed.run --nproc-per-node=1 \
    --master-addr=127.0.0.1 --master-port=29555 Sources/Trainer/Recipes/sft.py --config "$dir/$5.json" 2>&1 | grep '^{' > "$OUT/$5.jsonl"
  rm -rf "$dir/ck-$5" "$dir/out-$5"
  python3 -c '
import json, sys
v = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if l.startswith("{\"step\"") and json.loads(l)["step"] > 3]
print(round(sum(v) / len(v), 1) if v else "failed")' "$OUT/$5.jsonl"
}
plain() {
  timeout 200 python3 -m torch.distributed.run --nproc-per-node=1 --master-addr=127.0.0.1 --master-port=29556 \
    Benchmarks/recipe/plain_sft.py "$dir/8b/model" --fsdp --method "$1" --batch "$2" --seq 2048 --steps "$3" --warmup 3 $4 2>&1 | grep '^{' | tee "$OUT/$5.jsonl" | tail -1 \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s"])' 2>/dev/null || echo failed
}
echo "== 1. 8B full fine-tune, FSDP2, bf16, activation checkpointing, batch 1, seq 2048"
r1=$(recipe full 1 true 10 full8b); p1=$(plain full 1 7 --gradient-checkpointing plain-full8b)
echo "  recipe $r1 tok/s, bare FSDP loop $p1 tok/s (anchor 7,924)" | tee -a "$OUT/summary.txt"
echo "== 2. 8B LoRA r16, FSDP2, bf16, batch 4, seq 2048"
r2=$(recipe lora 4 false 10 lora8b); p2=$(plain lora 4 7 "" plain-lora8b)
echo "  recipe $r2 tok/s, bare FSDP loop $p2 tok/s (anchor 9,230)" | tee -a "$OUT/summary.txt"
echo "== 3. checkpoint stall, 8B weights"
timeout 200 python3 Benchmarks/recipe/stall_probe.py Sources/Trainer/Recipes/sft.py "$dir/8b/model" "$dir/probe" 2>&1 | grep '^{' | tee "$OUT/stall-8b.jsonl"
python3 - "$r1" "$p1" "$r2" "$p2" <<'PY' | tee -a "$OUT/summary.txt"
import sys
r1, p1, r2, p2 = sys.argv[1:5]
for name, r, p in (("full+GC", r1, p1), ("LoRA", r2, p2)):
    try:
        print(f"  {name}: recipe/bare = {float(r) / float(p):.3f}x (goal >= 0.98)")
    except ValueError:
        print(f"  {name}: failed (recipe {r}, bare {p})")
PY
