#!/usr/bin/env bash
# Real-GPU check of the sft recipe (issue 6), on a GPU machine with PyTorch, transformers and
# peft but no Swift and no network. Carries .build-static/capstan.gz (built here with
#   swift build -c release --product capstan --static-swift-stdlib --scratch-path .build-static
#   strip + gzip) and .build-static/libsqlite3.so.0; run as
#   run(command: "scripts/device/recipe-gpu-check.sh", carry: [".build-static/capstan.gz", ".build-static/libsqlite3.so.0"])
# Figures (all on this machine, baselines in the same call):
#   1. Llama-8B shape, LoRA r16 all-linear, bf16, seq 2048, batch 4: tokens/s of the recipe under
#      `capstan launch` vs the plain loop (DESIGN.md's anchor: 9,230 tok/s on one H200);
#   2. checkpoint stall on the 8B weights (16 GB): the recipe's Checkpointer vs naive
#      (DESIGN.md: naive ~22 s, pinned floor 0.29 s);
#   3. checkpoint stall of a real full fine-tune run by capstan (Llama-1B shape: weights +
#      AdamW state, 7.5 GB; the 8B's 48 GB would not fit this machine's disk twice).
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
dir=/tmp/capstan-recipe-check; mkdir -p "$dir"
bin="$dir/capstan"
gunzip -c .build-static/capstan.gz > "$bin" && chmod +x "$bin"
if ! ldconfig -p | grep -q libsqlite3.so.0; then
  cp .build-static/libsqlite3.so.0 "$dir/" && export LD_LIBRARY_PATH="$dir"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' | tee "$OUT/versions.txt"
df -h /tmp | tail -1; free -g | head -2

echo "== 2. stall on the 8B weights"
python3 Benchmarks/recipe/make_model.py llama-8b "$dir/8b" 2048 16 >/dev/null
timeout 240 python3 Benchmarks/recipe/stall_probe.py Sources/Trainer/Recipes/sft.py "$dir/8b/model" "$dir/probe" 2>&1 | grep '^{' | tee "$OUT/stall-8b.jsonl"

echo "== 1 and 3: the recipe under capstan"
CAPSTAN_BIN="$bin" PYTHON=system SHAPE=llama-8b METHOD=lora BATCH=4 SEQ=2048 STEPS=20 RUNS=1 \
  STALL_SHAPE=llama-1b STALL_BATCH=8 STALL_STEPS=30 STALL_EVERY=10 SKIP_SYNC=1 OUT="$OUT/bench" \
  timeout 420 scripts/bench-recipe.sh 2>&1 | tee "$OUT/bench.txt"
