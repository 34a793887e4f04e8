#!/usr/bin/env bash
# Test hosts with their own network stacks on this machine, for the SSH tests:
#   netns-lab.sh up DIR N     N network namespaces on a bridge of their own (10.213.K.0/24, the
#                             bridge is .1, host i is .(i+1)), each with its own sshd (port 22,
#                             key auth with DIR/client_key; DIR/host<i>/authorized_keys is read
#                             too, so a cloud emulator can authorise a launch's key) and its own
#                             home: logins there get HOME=DIR/host<i>/home (a copy of /etc/passwd
#                             saying so is bind-mounted for its sshd alone), so hosts do not share
#                             ~ as machines do not; sessions get TMPDIR=DIR/host<i>/tmp, so a
#                             test can search what was written there, and this shell's PATH (the
#                             "image": the same python3, with torch) — prints
#                             `host <i> <netns> <address>`
#   netns-lab.sh down DIR     kills the sshds, deletes the namespaces, veths and the bridge
# Traffic stays on the lab's own veths and bridge (no route leaves it). Needs root, iproute2 and
# openssh-server. Every `up` writes DIR/lab.env first, so `down` cleans up after a failed `up`.
set -euo pipefail
cmd=${1:?up|down}; dir=${2:?folder}
mkdir -p "$dir"
down() {
  [ -f "$dir/lab.env" ] || return 0
  # shellcheck disable=SC1091
  . "$dir/lab.env"
  for pidf in "$dir"/host*/sshd.pid; do [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true; done
  for ns in $NAMESPACES; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f "$dir/lab.env"
}
case "$cmd" in
down) down ;;
up)
  n=${3:?hosts}
  # Labs run side by side (tests in parallel): the subnet and names are chosen and the bridge
  # made under one lock, skipping any subnet a lab already routes. (Two bridges on one subnet
  # send a lab's logins to the other lab's sshd: "Permission denied (publickey)".)
  lockdir=/run/lock; [ -d "$lockdir" ] && [ -w "$lockdir" ] || lockdir=/tmp
  exec 9>"$lockdir/capstan-netns-lab.lock"
  flock -w 60 9
  free=""
  for _ in $(seq 1 500); do
    id=$(printf '%04x' $(( (RANDOM << 1 ^ $$ ^ RANDOM) & 0xffff )))
    k=$(( (0x$id % 240) + 10 ))
    taken=$(ip -4 -o addr show; ip -4 route show "10.213.$k.0/24")
    [[ "$taken" != *" 10.213.$k."* && "$taken" != *"10.213.$k.0/24"* ]] && ! ip link show "cbr$id" >/dev/null 2>&1 && { free=1; break; }
  done
  [ -n "$free" ] || { echo "netns-lab: no free 10.213.K.0/24 subnet (all 240 in use?)" >&2; exit 1; }
  br="cbr$id"; names=""
  for i in $(seq 1 "$n"); do names="$names cap$id-$i"; done
  printf 'BRIDGE=%s\nNAMESPACES="%s"\nSUBNET=10.213.%s\n' "$br" "$names" "$k" > "$dir/lab.env"
  trap 'down' ERR
  ip link add "$br" type bridge
  ip addr add "10.213.$k.1/24" dev "$br"
  ip link set "$br" up
  flock -u 9; exec 9>&-
  [ -f "$dir/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  mkdir -p /run/sshd
  for i in $(seq 1 "$n"); do
    ns="cap$id-$i"; addr="10.213.$k.$((i + 1))"; h="$dir/host$i"
    mkdir -p "$h" "$h/tmp" && mkdir -p -m 700 "$h/home" && : > "$h/authorized_keys"
    ip netns add "$ns"
    ip link add "cv$id$i" type veth peer name eth0 netns "$ns"
    ip link set "cv$id$i" master "$br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    [ -f "$h/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$h/hostkey"
    cat > "$h/sshd_config" <<CFG
Port 22
ListenAddress $addr
HostKey $h/hostkey
PidFile $h/sshd.pid
AuthorizedKeysFile $dir/authorized_keys $h/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100
MaxSessions 100
SetEnv PATH=$PATH TMPDIR=$h/tmp
CFG
    awk -F: -v OFS=: -v home="$h/home" '$1 == "root" { $6 = home } 1' /etc/passwd > "$h/passwd"
    # (`ip netns exec` gives the command a mount namespace of its own: the bind stays in it.)
    ip netns exec "$ns" sh -c 'mount --bind "$1" /etc/passwd && exec /usr/sbin/sshd -f "$2" -E "$3"' sh "$h/passwd" "$h/sshd_config" "$h/sshd.log"
    echo "host $i $ns $addr"
  done
  # sshd daemonizes; wait until each answers.
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 300); do [ -s "$dir/host$i/sshd.pid" ] && break; sleep 0.1; done
    [ -s "$dir/host$i/sshd.pid" ] || { echo "netns-lab: host $i's sshd did not start in 30 s: $(tail -5 "$dir/host$i/sshd.log" 2>/dev/null)" >&2; down; exit 1; }
  done
  ;;
*) echo "usage: $0 up DIR N | down DIR" >&2; exit 2 ;;
esac
