#!/usr/bin/env bash
# The main job on the embedded default (local capacity, local bucket), end to end.
# Today (foundation): builds capstan, shows the plugins it found and the capacity it can offer
# on this machine. Provisioning (`capstan up`) and training (`capstan launch`) join this script as
# they land.
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
echo "==> capstan offers --gpu H100 --gpus-per-node 8 --nodes 2 --spot   (with the sim plugin enabled)"
mkdir -p "$CAPSTAN_HOME"
sim_home="$CAPSTAN_HOME/sim-demo"
mkdir -p "$sim_home"
printf 'providers:\n  sim: {}\n' > "$sim_home/config.yaml"
"$bin" --version >/dev/null
CAPSTAN_HOME="$sim_home" "$bin" offers --gpu H100 --gpus-per-node 8 --nodes 2 --spot
