#!/usr/bin/env bash
# SSH benchmark (issue: remote nodes). On 2 already-running SSH hosts (network namespaces with
# their own sshd, scripts/netns-lab.sh; needs root), `capstan launch` → the training command's
# first line, side by side with starting the same torchrun commands by hand over ssh (one ssh
# per host, in parallel, the workdir already there), RUNS each, interleaved, medians. The
# command first prints a timestamp, so the time splits into reaching the command (Capstan's
# part: status reads, agent config, agent start, all over SSH) and torchrun's own start-up.
# Usage: sudo scripts/bench-ssh.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/launch-times.sh
. scripts/lib/launch-times.sh
# shellcheck source=scripts/lib/ssh-bench-lab.sh
. scripts/lib/ssh-bench-lab.sh
RUNS="${1:-10}"
scripts/install-torch.sh
swift build -c release --product capstan >/dev/null
CAPSTAN="$PWD/.build/release/capstan"
ssh_bench_lab ssh
# One launch first: ships the agent binary to both hosts (once per build), like any first use.
"$CAPSTAN" launch "$work/job/job.yaml" --cluster warm --quiet >/dev/null
SSH=(ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$work/known_hosts" -i "$work/lab/client_key")
# By hand: the workdir copied once, then one ssh per host running the same command.
for i in 1 2; do "${SSH[@]}" "root@$SUBNET.$((i + 1))" "mkdir -p $work/lab/host$i/hand" < /dev/null; cp "$work/job/train.py" "$work/lab/host$i/hand/"; done
by_hand() {
  local port=$((20000 + RANDOM % 10000))
  for rank in 0 1; do
    "${SSH[@]}" "root@$SUBNET.$((rank + 2))" "cd $work/lab/host$((rank + 1))/hand && env NNODES=2 NODE_RANK=$rank NPROC_PER_NODE=1 MASTER_ADDR=$SUBNET.2 MASTER_PORT=$port \
      CAPSTAN_CHECKPOINT_DIR=\$PWD/ckpt CAPSTAN_OUTPUT_DIR=\$PWD/out TOTAL_STEPS=3 CKPT_EVERY=100 STEP_SLEEP=0 GLOO_SOCKET_IFNAME=eth0 \
      sh -c 'mkdir -p \$CAPSTAN_CHECKPOINT_DIR && $STAMP; $TORCHRUN'" > "$work/hand-$rank.log" 2>&1 < /dev/null &
  done
  wait
}
echo "launch → first training line, 2 SSH hosts (torchrun, gloo), $RUNS runs each, interleaved"
compare_launches "$RUNS" "$work/job/job.yaml" 'capstan launch (2 SSH hosts)' 'by hand over ssh' 0
