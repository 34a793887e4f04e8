#!/usr/bin/env bash
# A/B benchmark of two capstan builds: `capstan launch` → the first training line on 2 SSH hosts
# (network namespaces with their own sshd, scripts/netns-lab.sh; needs root), NEW and OLD launches
# interleaved on the same lab, so both see the same load (on a shared 2-core machine the load
# moves the absolute figures by ±50%; the difference between builds is what this measures).
# Each build ships itself to the hosts once, before the runs. Medians of RUNS each.
# Usage: sudo scripts/bench-ssh-ab.sh NEW_CAPSTAN OLD_CAPSTAN [RUNS]   (default 10; release builds)
set -euo pipefail
CAPSTAN="$(realpath "${1:?usage: bench-ssh-ab.sh NEW_CAPSTAN OLD_CAPSTAN [RUNS]}")"
OLD="$(realpath "${2:?usage: bench-ssh-ab.sh NEW_CAPSTAN OLD_CAPSTAN [RUNS]}")"
RUNS="${3:-10}"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/launch-times.sh
. scripts/lib/launch-times.sh
work="$(mktemp -d /tmp/capstan-bench-ab.XXXXXX)"
export CAPSTAN_HOME="$work/home"
trap '"$CAPSTAN" down warm >/dev/null 2>&1 || true; scripts/netns-lab.sh down "$work/lab"; rm -rf "$work"' EXIT
scripts/netns-lab.sh up "$work/lab" 2 >/dev/null
# shellcheck disable=SC1091
. "$work/lab/lab.env"
mkdir -p "$CAPSTAN_HOME" "$work/job"
cat > "$CAPSTAN_HOME/config.yaml" <<YAML
providers:
  local: {enabled: false}
  ssh:
    user: root
    key: $work/lab/client_key
    hosts:
      - {name: h1, address: $SUBNET.2, interface: eth0, workRoot: $work/lab/host1/work}
      - {name: h2, address: $SUBNET.3, interface: eth0, workRoot: $work/lab/host2/work}
YAML
cp examples/ddp-regression/train.py "$work/job/"
STAMP='python3 -c "import time; print(\"CMD\", time.time())"'
TORCHRUN='python3 -m torch.distributed.run --nnodes=$NNODES --node-rank=$NODE_RANK --nproc-per-node=$NPROC_PER_NODE --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py'
cat > "$work/job/job.yaml" <<YAML
name: bench
resources: {nodes: 2}
workdir: .
env: {TOTAL_STEPS: "3", CKPT_EVERY: "100", STEP_SLEEP: "0"}
run: $STAMP; $TORCHRUN
YAML
"$CAPSTAN" up warm --nodes 2 >/dev/null
# Each build ships itself once.
"$CAPSTAN" launch "$work/job/job.yaml" --cluster warm --quiet >/dev/null
"$OLD" launch "$work/job/job.yaml" --cluster warm --quiet >/dev/null
# compare_launches' second arm: the OLD build's launch, its node logs where by_hand's go.
by_hand() {
  "$OLD" launch "$work/job/job.yaml" --cluster warm --quiet >/dev/null
  local job; job=$(last_job)
  cp "$CAPSTAN_HOME/jobs/$job/logs/node-0.log" "$work/hand-0.log"; cp "$CAPSTAN_HOME/jobs/$job/logs/node-1.log" "$work/hand-1.log"
}
echo "launch → first training line, 2 SSH hosts, $RUNS runs each, interleaved: NEW $CAPSTAN ($(stat -c %s "$CAPSTAN") bytes) vs OLD $OLD ($(stat -c %s "$OLD") bytes)"
compare_launches "$RUNS" "$work/job/job.yaml" 'NEW' 'OLD' 0
