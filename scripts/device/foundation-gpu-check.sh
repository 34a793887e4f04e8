#!/usr/bin/env bash
# Real-GPU check of the foundation on a machine without Swift: the static `capstan` binary
# detects the GPUs through nvidia-smi, offers them as local capacity, and provisions a local
# cluster on them. Expects .build-static/capstan.gz (stripped, gzipped, built with
# --static-swift-stdlib) and, for machines without it, .build-static/libsqlite3.so.0.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
bin=/tmp/capstan-gpu-check/capstan
mkdir -p "$(dirname "$bin")"
gunzip -c .build-static/capstan.gz > "$bin" && chmod +x "$bin"
if ! ldconfig -p | grep -q libsqlite3.so.0; then
  echo "libsqlite3 missing: using the carried copy"
  cp .build-static/libsqlite3.so.0 "$(dirname "$bin")/" && export LD_LIBRARY_PATH="$(dirname "$bin")"
fi
uname -a; (ldd --version | head -1); ldd "$bin"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits | tee "$OUT/nvidia-smi.txt"
export CAPSTAN_HOME=/tmp/capstan-gpu-check/home
rm -rf "$CAPSTAN_HOME"
echo "== capstan offers"; /usr/bin/time -f "wall %e s" "$bin" offers
echo "== capstan offers --gpu H200 --json"; "$bin" offers --gpu H200 --json > "$OUT/offers-h200.json"; echo "rc=$?"
echo "== capstan offers --gpu H100 --explain"; "$bin" offers --gpu H100 --explain
echo "== capstan up gpu (all GPUs of this machine)"
gpus=$(nvidia-smi -L | wc -l)
"$bin" up gpu --gpu "$(head -1 "$OUT/nvidia-smi.txt" | cut -d, -f1 | sed 's/NVIDIA //')" --gpus-per-node "$gpus" --nodes 2
"$bin" status --json > "$OUT/status.json"; "$bin" status
"$bin" down gpu
echo "== plugins list"; "$bin" plugins list
echo "== storage: a 256 MiB file into a file:// bucket and back (checksummed)"
head -c 268435456 /dev/urandom > /tmp/capstan-gpu-check/blob
"$bin" storage cp /tmp/capstan-gpu-check/blob file:///tmp/capstan-gpu-check/bucket/run/blob
"$bin" storage cp file:///tmp/capstan-gpu-check/bucket/run/blob /tmp/capstan-gpu-check/blob.back && cmp /tmp/capstan-gpu-check/blob /tmp/capstan-gpu-check/blob.back && echo "round trip identical"
echo "== s3:// with no credentials (built-in S3 client; no network here): a clear error"
HOME=/tmp/capstan-gpu-check "$bin" storage ls s3://some-bucket/ ; echo "rc=$?"
