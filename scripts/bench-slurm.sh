#!/usr/bin/env bash
# Time from submitting to the training command's first line on an idle Slurm cluster (the lab of
# scripts/slurm-lab.sh, 2 nodes): `capstan launch` of examples/ddp-regression against `sbatch` of
# the same torchrun command by hand, alternately, in the same run. Prints each run and the
# medians' ratio (goal: ≤ 1.1×). Needs root, slurm-wlm, munge and python3 with torch.
#
#   scripts/bench-slurm.sh [ROUNDS]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
rounds="${1:-5}"
swift build --product capstan >&2
capstan="$(swift build --show-bin-path)/capstan"
work="$(mktemp -d /tmp/capstan-bench-slurm.XXXXXX)"
chmod 755 "$work"   # munged's socket lives below it: every folder above must be searchable
lab="$work/lab"
cleanup() { scripts/slurm-lab.sh down "$lab" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
eval "$(scripts/slurm-lab.sh up "$lab" 2)"

mkdir -p "$work/job" "$work/shared"
cp examples/ddp-regression/train.py "$work/job/"
cat > "$work/job/job.yaml" <<EOF
name: bench
resources: {nodes: 2, providers: [slurm]}
workdir: .
env: {TOTAL_STEPS: "20", CKPT_EVERY: "10", STEP_SLEEP: "0.01", GLOO_SOCKET_IFNAME: eth0}
run: python3 -m torch.distributed.run --nnodes=\$NNODES --node-rank=\$NODE_RANK --nproc-per-node=\$NPROC_PER_NODE --master-addr=\$MASTER_ADDR --master-port=\$MASTER_PORT train.py
storage: file://$work/bucket
EOF
export CAPSTAN_HOME="$work/home"
mkdir -p "$CAPSTAN_HOME"
cat > "$CAPSTAN_HOME/config.yaml" <<EOF
providers:
  local: {enabled: false}
  slurm: {slurmConf: $SLURM_CONF, workRoot: $work/shared}
EOF
# The same command by hand: one sbatch whose script starts torchrun on both nodes with srun.
cat > "$work/job/by-hand.sh" <<'EOF'
#!/bin/sh
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)
export MASTER_ADDR=$(sinfo -h -N -n "$first" -o %o | head -1)
export TOTAL_STEPS=20 CKPT_EVERY=10 STEP_SLEEP=0.01 GLOO_SOCKET_IFNAME=eth0 CAPSTAN_CHECKPOINT_DIR=$PWD/ckpt
exec srun --nodes=2 --ntasks-per-node=1 sh -c 'python3 -m torch.distributed.run --nnodes=2 --node-rank=$SLURM_NODEID --nproc-per-node=1 --master-addr=$MASTER_ADDR --master-port=29511 train.py'
EOF
chmod +x "$work/job/by-hand.sh"

now() { date +%s.%N; }
# Seconds until `pattern` appears in `file`, or fail after 120 s.
wait_for() {
  local file=$1 pattern=$2 start=$3
  for _ in $(seq 1 12000); do
    if grep -q -- "$pattern" "$file" 2>/dev/null; then echo "$(now) - $start" | bc; return 0; fi
    sleep 0.01
  done
  echo "timed out waiting for '$pattern' in $file" >&2; tail -20 "$file" >&2; return 1
}
idle() { until [ "$(sinfo -h -t idle -o %D | awk '{s+=$1} END {print s+0}')" -ge 2 ]; do sleep 0.1; done; }

sbatch_times=(); capstan_times=()
for r in $(seq 1 "$rounds"); do
  idle
  rm -rf "$work/job/ckpt"; out="$work/sbatch-$r.out"; : > "$out"
  start=$(now)
  (cd "$work/job" && sbatch --parsable -N2 --exclusive --output="$out" by-hand.sh >/dev/null)
  t=$(wait_for "$out" '"event": "start"' "$start"); sbatch_times+=("$t")
  squeue -h -o %i | xargs -r scancel
  idle
  out="$work/capstan-$r.out"; : > "$out"
  start=$(now)
  "$capstan" launch "$work/job/job.yaml" > "$out" 2>&1 &
  pid=$!
  t=$(wait_for "$out" '"event": "start"' "$start"); capstan_times+=("$t")
  wait "$pid" || { echo "capstan launch failed:" >&2; tail -20 "$out" >&2; exit 1; }
  printf 'round %d: sbatch by hand %.2f s, capstan launch %.2f s\n' "$r" "${sbatch_times[-1]}" "${capstan_times[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ms=$(median "${sbatch_times[@]}"); mc=$(median "${capstan_times[@]}")
printf 'submit → first line of the training command, median of %d: sbatch by hand %.2f s, capstan launch %.2f s: %.2fx (goal ≤ 1.1x)\n' "$rounds" "$ms" "$mc" "$(echo "$mc / $ms" | bc -l)"
