#!/usr/bin/env bash
# The main job on the embedded default (local capacity, local bucket), end to end.
# Today: builds capstan, shows the plugins and offers it finds, provisions a 2-node local cluster,
# shows failover on a simulated cloud, and tears down. Training (`capstan launch`) joins this
# script as it lands.
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
echo "Done. Training on the cluster (capstan launch) arrives with the trainer issue."
