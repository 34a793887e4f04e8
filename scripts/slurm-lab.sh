#!/usr/bin/env bash
# A real Slurm cluster on this machine, for the Slurm tests and for trying the provider by hand:
#   slurm-lab.sh up DIR [N]   munged, slurmctld on a bridge of its own (10.199.K.1) and N slurmd
#                             (default 2), each in its own network namespace (10.199.K.(10+i)) and
#                             UTS namespace (hostname node<i>), each node with one GPU in GRES
#                             (gpu:h100:1; no device file: Slurm only counts it). Partition
#                             `debug` (default, no time limit) and `short` (MaxTime 30 min).
#                             Prints `export SLURM_CONF=DIR/slurm.conf` and the test variables
#                             (also in DIR/slurm.env), once every node is idle.
#   slurm-lab.sh down DIR     cancels every job, stops the daemons, kills what is left in the
#                             namespaces, deletes them, the veths and the bridge
# Job steps share this machine's filesystem and PIDs (they see the node's network and hostname),
# so a shared filesystem comes for free, as on most clusters. Traffic stays on the lab's veths and
# bridge. Needs root, iproute2, slurm-wlm and munge (Debian's). Every `up` writes DIR/lab.env
# first, so `down` cleans up after a failed `up`.
set -euo pipefail
cmd=${1:?up|down}; dir=${2:?folder}
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

down() {
  [ -f "$dir/lab.env" ] || return 0
  # shellcheck disable=SC1091
  . "$dir/lab.env"
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.bgpid" ]; then
    SLURM_CONF="$dir/slurm.conf" timeout 5 scancel --quiet --full -u root 2>/dev/null || true
  fi
  local pids=""
  for f in "$dir"/slurmd-*.bgpid "$dir/slurmctld.bgpid"; do
    [ -f "$f" ] || continue
    pids="$pids $(cat "$f")"
  done
  # shellcheck disable=SC2086
  [ -n "${pids// /}" ] && kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 100); do
    alive=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  [ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null || true
  # Job processes slurmd left behind (a cancel lands on the node side after squeue forgets it).
  for ns in $NAMESPACES; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for v in $VETHS; do ip link del "$v" 2>/dev/null || true; done
  for ns in $NAMESPACES; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  [ -f "$dir/munge/munged.pid" ] && kill "$(cat "$dir/munge/munged.pid")" 2>/dev/null || true
  rm -f "$dir/lab.env" "$dir"/*.bgpid
}

fail() {
  echo "slurm-lab: $*" >&2
  for f in "$dir"/munge/out "$dir"/log/*; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  down
  exit 1
}

case "$cmd" in
down) down ;;
up)
  n=${3:-2}
  for tool in slurmctld slurmd munged mungekey ip nsenter unshare; do
    command -v "$tool" >/dev/null 2>&1 || { echo "slurm-lab: $tool not found: apt-get install slurm-wlm munge iproute2" >&2; exit 1; }
  done
  [ "$(id -u)" -eq 0 ] || { echo "slurm-lab: needs root (namespaces, a bridge, slurmd as root)" >&2; exit 1; }
  # Labs run side by side: the subnet, names and ports are chosen and the bridge made under one
  # lock, skipping any subnet a lab already routes and any port in use.
  lockdir=/run/lock; [ -d "$lockdir" ] && [ -w "$lockdir" ] || lockdir=/tmp
  exec 9>"$lockdir/capstan-slurm-lab.lock"
  flock -w 60 9
  k=""
  for _ in $(seq 1 200); do
    c=$(( (RANDOM ^ $$) % 250 + 1 ))
    ip -4 route show | grep -q "^10\.199\.$c\.0/24" && continue
    ss -ltn 2>/dev/null | grep -q ":$(( 20000 + c * 2 )) " && continue
    k=$c; break
  done
  [ -n "$k" ] || { echo "slurm-lab: no free 10.199.K.0/24 subnet" >&2; exit 1; }
  bridge="capsbr$k"
  namespaces=""; veths=""
  for i in $(seq 1 "$n"); do namespaces="$namespaces capsl${k}n$i"; veths="$veths capsl${k}v$i"; done
  cat > "$dir/lab.env" <<EOF
BRIDGE=$bridge
NAMESPACES="$namespaces"
VETHS="$veths"
EOF
  ip link add "$bridge" type bridge
  ip addr add "10.199.$k.1/24" dev "$bridge"
  ip link set "$bridge" up
  flock -u 9
  for i in $(seq 1 "$n"); do
    ns="capsl${k}n$i"; veth="capsl${k}v$i"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$bridge" up
    ip -n "$ns" addr add "10.199.$k.$(( 10 + i ))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done

  # munged wants every folder above its socket searchable by all (DIR and its parents).
  chmod 755 "$dir"
  mkdir -p -m 755 "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  rm -f "$dir/munge/munge.key"
  mungekey -c -k "$dir/munge/munge.key"
  munged --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" >"$dir/munge/out" 2>&1 \
    || fail "munged did not start"
  for _ in $(seq 1 100); do munge -S "$dir/munge/munge.sock" -n >/dev/null 2>&1 && break; sleep 0.05; done

  port=$(( 20000 + k * 2 ))
  nodes=""
  {
    cat <<EOF
ClusterName=capstan$k
SlurmctldHost=$(hostname -s)(10.199.$k.1)
SlurmctldPort=$port
SlurmdPort=$(( port + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=60
MailProg=/bin/true
EOF
    for i in $(seq 1 "$n"); do
      echo "NodeName=node$i NodeAddr=10.199.$k.$(( 10 + i )) CPUs=1 RealMemory=1024 Gres=gpu:h100:1 State=UNKNOWN"
      nodes="$nodes${nodes:+,}node$i"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=short Nodes=ALL MaxTime=30 State=UP"
  } > "$dir/slurm.conf"
  # A GPU GRES needs a device file; /dev/null stands in (nothing opens it: TaskPlugin=task/none).
  echo "Name=gpu Type=h100 File=/dev/null" > "$dir/gres.conf"
  for i in $(seq 1 "$n"); do mkdir -p -m 755 "$dir/spool/node$i"; done
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -D -i >"$dir/log/slurmctld.out" 2>&1 &
  echo $! > "$dir/slurmctld.bgpid"
  for i in $(seq 1 "$n"); do
    # nsenter, not `ip netns exec` (which remounts /sys: slurmd then finds no cgroup mounts);
    # the exec chain keeps $! the slurmd's pid.
    nsenter --net="/run/netns/capsl${k}n$i" unshare --uts sh -c "hostname node$i; exec slurmd -D -N node$i" >"$dir/log/slurmd-node$i.out" 2>&1 &
    echo $! > "$dir/slurmd-node$i.bgpid"
  done
  for _ in $(seq 1 300); do
    idle="$(sinfo -h -p debug -t idle -o %D 2>/dev/null | awk '{s+=$1} END {print s+0}')"
    [ "$idle" = "$n" ] && break
    sleep 0.1
  done
  [ "${idle:-0}" = "$n" ] || fail "the $n nodes did not become idle within 30 s"
  {
    echo "export SLURM_CONF=$dir/slurm.conf"
    echo "export CAPSTAN_TEST_SLURM_NODES=$nodes"
    echo "export CAPSTAN_TEST_SLURM_SUBNET=10.199.$k.0/24"
    echo "export CAPSTAN_TEST_SLURM_NAMESPACES=\"${namespaces# }\""
  } | tee "$dir/slurm.env"
  ;;
*) echo "usage: slurm-lab.sh up DIR [N] | down DIR" >&2; exit 2 ;;
esac
