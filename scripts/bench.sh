#!/usr/bin/env bash
# Builds the benchmark and the plugins in release mode and runs them; prints figures and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product CapstanPluginSim >/dev/null
swift build -c release --product capstan >/dev/null
swift build -c release --product capstan-bench >/dev/null
exec "$(swift build -c release --show-bin-path)/capstan-bench" "$@"
