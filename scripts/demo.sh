#!/usr/bin/env bash
# The main job on the embedded default (local capacity, local bucket), end to end.
# Builds capstan, shows the plugins and offers it finds, provisions a 2-node local cluster, shows
# failover on a simulated cloud, then fine-tunes a tiny Llama-architecture model with the built-in
# sft recipe (LoRA, torch.distributed + gloo on CPU, 2 local nodes) with
# checkpoints in a local bucket, kills one node's training process mid-run, and shows the job
# resuming from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export CAPSTAN_HOME="${CAPSTAN_HOME:-$PWD/.capstan-demo}"
echo "==> building capstan (first build takes a few minutes)"
# (One product per build: given twice, --product builds only the last.)
swift build --product capstan >/dev/null
swift build --product CapstanPluginSim >/dev/null
bin="$(swift build --show-bin-path)/capstan"
echo "==> CAPSTAN_HOME=$CAPSTAN_HOME"
echo "==> capstan plugins list"
"$bin" plugins list
echo
echo "==> capstan offers          (this machine, through the built-in local provider)"
"$bin" offers
echo
echo "==> capstan up demo --nodes 2   (two local nodes: own folders, own loopback addresses)"
"$bin" down demo >/dev/null 2>&1 || true
"$bin" up demo --nodes 2
echo
echo "==> capstan status"
"$bin" status
echo
echo "==> capstan down demo"
"$bin" down demo
echo
# A simulated cloud whose two cheapest regions have no capacity: watch the failover.
sim_home="$CAPSTAN_HOME/sim-demo"
rm -rf "$sim_home"; mkdir -p "$sim_home"
printf 'providers:\n  local:\n    enabled: false\n  sim:\n    noCapacityRegions: [sim-east-1, sim-west-1]\n    bootSeconds: 1\n    stateFile: %s/sim-cloud.json\n' "$sim_home" > "$sim_home/config.yaml"
echo "==> capstan offers --gpu H100 --gpus-per-node 8 --nodes 2 --spot   (sim plugin enabled)"
CAPSTAN_HOME="$sim_home" "$bin" offers --gpu H100 --gpus-per-node 8 --nodes 2 --spot
echo
echo "==> capstan up train --gpu H100 --gpus-per-node 8 --nodes 2 --spot"
CAPSTAN_HOME="$sim_home" "$bin" up train --gpu H100 --gpus-per-node 8 --nodes 2 --spot
CAPSTAN_HOME="$sim_home" "$bin" down train
echo
scripts/install-torch.sh
echo "==> capstan launch examples/sft-tiny/job.yaml"
echo "    The built-in sft recipe fine-tunes a tiny Llama-architecture model with LoRA on 2 local"
echo "    nodes (torchrun + gloo, CPU); each node's agent first builds the job's Python environment"
echo "    (transformers, peft) once and caches it. After checkpoint step 100 this script kills node"
echo "    1's training process with kill -9: watch the job resume from its last checkpoint."
( for _ in $(seq 1 900); do
    ck=$("$bin" jobs --json 2>/dev/null | python3 -c 'import json,sys; j=[x for x in json.load(sys.stdin) if x["name"]=="sft-tiny" and not x.get("finishedAt")]; print(j[0].get("latestCheckpoint") or 0 if j else 0)' 2>/dev/null || echo 0)
    if [ "${ck:-0}" -ge 100 ]; then
      pid=$(ps -eo pid=,args= | grep '/node-1-[^ ]*/recipe/sft.py' | grep -v -e torch.distributed.run -e grep | awk '{print $1}' | head -1)
      [ -n "$pid" ] && echo "==> kill -9 $pid  (node 1's training process, after checkpoint step $ck)" && kill -9 "$pid"
      break
    fi
    sleep 1
  done ) &
killer=$!
"$bin" launch examples/sft-tiny/job.yaml --heartbeat-timeout 10 \
  | grep -v -e '"step": [0-9]*[1-9],' -e '"step": [0-9]*[1-46-9]0,' -e checkpoint_written -e checkpoint_uploaded \
      -E -e '^\[node [0-9]+\] (\[rank[0-9]+\]: |  |Traceback|torch\.distributed\.elastic|E[0-9]{4} |={20}|-{20})' || true
# (Shown: every 50th step, and capstan's own account of the failure; the workers' tracebacks
# are in `capstan logs`.)
wait "$killer" || true
job=$("$bin" jobs --json | python3 -c 'import json,sys; print([j for j in json.load(sys.stdin) if j["name"]=="sft-tiny"][0]["id"])')
echo
echo "==> capstan jobs"
"$bin" jobs
echo
echo "==> capstan checkpoints $job"
"$bin" checkpoints "$job"
echo
echo "==> capstan events $job --kind attempt,restarting,succeeded,failed   (its history, from the state store)"
"$bin" events "$job" --kind attempt,restarting,succeeded,failed
echo
out=$("$bin" jobs --json | python3 -c 'import json,sys; print([j for j in json.load(sys.stdin) if j["name"]=="sft-tiny"][0]["storage"])')/outputs
venv=$("$bin" logs "$job" --node 0 | sed -n 's/.*python env [0-9a-f]*: \(building\|cached\) in \([^ ]*\).*/\2/p' | head -1)
echo "==> the final adapter, loaded with peft from the bucket, answers:"
"$venv/bin/python" examples/sft-tiny/generate.py "${out#file://}" 2>/dev/null || echo "(could not load the adapter)"
echo
echo "==> capstan metrics $job   (the loss curve; steps after the restart come from attempt 2)"
"$bin" metrics "$job" --rows 8
echo
echo "Done. Weights (LoRA adapter, Hugging Face layout, with its random base in base/): $out"
echo "Node logs: capstan logs $job --node 1"
