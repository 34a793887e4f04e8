# Shared by the SSH benchmarks (sourced): ssh_bench_lab NAME makes a 2-host lab (network
# namespaces with their own sshd, scripts/netns-lab.sh), a CAPSTAN_HOME whose config lists them,
# the ddp-regression job (3 steps, its command launch-times.sh's "$STAMP; $TORCHRUN") in
# $work/job, and a warm 2-node cluster `warm` made with $CAPSTAN; all removed on exit.
ssh_bench_lab() {
  work="$(mktemp -d "/tmp/capstan-bench-$1.XXXXXX")"
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
  cat > "$work/job/job.yaml" <<YAML
name: bench
resources: {nodes: 2}
workdir: .
env: {TOTAL_STEPS: "3", CKPT_EVERY: "100", STEP_SLEEP: "0"}
run: $STAMP; $TORCHRUN
YAML
  "$CAPSTAN" up warm --nodes 2 >/dev/null
}
