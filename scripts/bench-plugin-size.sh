#!/usr/bin/env bash
# The size of a Swift plugin: builds the sim plugin in release mode (it links CapstanPluginKit,
# CapstanTesting and CapstanStorage over CapstanCore: no GRDB, NIO or AsyncHTTPClient), prints its
# raw and stripped size and which heavy libraries it carries, and fails when the stripped library
# is 5 MB or more (issue 15's goal; it was 24.7 MB when every plugin linked all of Capstan).
#
#   scripts/bench-plugin-size.sh            # build (a few minutes the first time), then measure
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product CapstanPluginSim >&2
lib="$(swift build -c release --show-bin-path)/libCapstanPluginSim.so"
stripped="$(mktemp /tmp/capstan-plugin-size.XXXXXX)"
trap 'rm -f "$stripped"' EXIT
strip -o "$stripped" "$lib"
raw=$(stat -c %s "$lib"); small=$(stat -c %s "$stripped")
awk -v r="$raw" -v s="$small" 'BEGIN { printf "libCapstanPluginSim.so (release): %d bytes raw, %d bytes stripped (%.2f MB); before the split: 24.7 MB stripped (ratio %.2f)\n", r, s, s / 1e6, s / 24.7e6 }'
for lib_name in GRDB NIOCore AsyncHTTPClient Yams; do
  printf '  symbols mentioning %-16s %d\n' "$lib_name" "$(strings "$stripped" | grep -c "$lib_name" || true)"
done
if (( small >= 5000000 )); then
  echo "FAIL: the stripped sim plugin is $small bytes (goal: under 5 MB); check what CapstanPluginSim links (Package.swift)." >&2
  exit 1
fi
