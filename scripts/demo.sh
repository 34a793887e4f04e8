#!/usr/bin/env bash
# The main job on the embedded default (local capacity, local bucket), end to end.
# Builds capstan, shows the plugins and offers it finds, provisions a 2-node local cluster, shows
# failover on a simulated cloud, then runs a real 2-node torch.distributed job (gloo, CPU) with
# checkpoints in a local bucket, kills one node's training process mid-run, and shows the job
# resuming from its last checkpoint. The built-in fine-tune recipe joins this script next.
set -euo pipefail
cd "$(dirname "$0")/.."
export CAPSTAN_HOME="${CAPSTAN_HOME:-$PWD/.capstan-demo}"
echo "==> building capstan (first build takes a few minutes)"
swift build --product capstan --product CapstanPluginSim >/dev/null
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
job_yaml="$CAPSTAN_HOME/ddp-job.yaml"
sed 's/TOTAL_STEPS: "60"/TOTAL_STEPS: "120"/' examples/ddp-regression/job.yaml > "$job_yaml"
mkdir -p "$CAPSTAN_HOME/ddp" && cp examples/ddp-regression/train.py "$CAPSTAN_HOME/ddp/" && mv "$job_yaml" "$CAPSTAN_HOME/ddp/job.yaml"
echo "==> capstan launch examples/ddp-regression/job.yaml   (2 local nodes, torchrun + gloo, 120 steps)"
echo "    (in 8 s this script kills node 1's training process with kill -9: watch the resume)"
( sleep 8
  pid_file=$(ls -t "$CAPSTAN_HOME"/local/nodes/*/work/.capstan/*/attempt-1/worker-1.pid 2>/dev/null | head -1)
  [ -n "$pid_file" ] && echo "==> kill -9 $(cat "$pid_file")  (node 1's training process)" && kill -9 "$(cat "$pid_file")" ) &
"$bin" launch "$CAPSTAN_HOME/ddp/job.yaml" --heartbeat-timeout 10 | grep -v '"step": [0-9]*[1-9],' || true
wait
job=$("$bin" jobs --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo
echo "==> capstan jobs"
"$bin" jobs
echo
echo "==> capstan checkpoints $job"
"$bin" checkpoints "$job"
echo
echo "Done. Node logs: capstan logs $job --node 1   Weights: $("$bin" jobs --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["storage"])')/outputs"
