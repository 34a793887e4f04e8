#!/usr/bin/env bash
# Builds the benchmark and the plugins in release mode and runs them; prints figures and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product CapstanPluginSim >/dev/null
swift build -c release --product capstan >/dev/null
swift build -c release --product CapstanPluginAWS >/dev/null
swift build -c release --product capstan-bench >/dev/null
bin="$(swift build -c release --show-bin-path)/capstan-bench"
if [ "${1:-all}" = "s3" ] || [ "${1:-all}" = "all" ]; then
  if [ -z "${CAPSTAN_TEST_S3_ENDPOINT:-}" ]; then
    servers="$(mktemp -d /tmp/capstan-bench-servers.XXXXXX)"
    trap 'scripts/test-servers.sh stop "$servers"; rm -rf "$servers"' EXIT
    eval "$(scripts/test-servers.sh start "$servers")"
  fi
fi
"$bin" "$@"
