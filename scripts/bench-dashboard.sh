#!/usr/bin/env bash
# The web dashboard's job list with 1,000 jobs (issue 17): a release `capstan serve` on a seeded
# SQLite home; the /v1/overview route's p50/p99, then first paint in a real headless Chromium
# (median of 15 loads: first contentful paint, job table rendered and painted). Needs chromium,
# chromium-driver and a Python with Selenium (CAPSTAN_SELENIUM_PYTHON, ./.venv, or python3).
# CAPSTAN_BENCH_CONFIG=debug uses the debug build instead of building for release.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${CAPSTAN_BENCH_CONFIG:-release}"
swift build -c "$config" --product capstan >/dev/null
swift build -c "$config" --product capstan-bench >/dev/null
"$(swift build -c "$config" --show-bin-path)/capstan-bench" dashboard
