#!/usr/bin/env bash
# Runs every test: builds all products first (the tests load the built plugin .so files and run
# the built `capstan` binary), then runs the suites. Needs only the Swift toolchain and a C
# compiler (the plugin-loading tests compile C fixture plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests "$@"
swift test --skip-build "$@"
