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
# shellcheck source=scripts/lib/ssh-bench-lab.sh
. scripts/lib/ssh-bench-lab.sh
ssh_bench_lab ab
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
