#!/usr/bin/env bash
# The control plane at scale (issue 16): 10,000 jobs, 100,000 events and 1,000 clusters behind a
# release `capstan serve`; p50/p99 of the API and of `capstan jobs` through it, 100 concurrent
# clients, each next to the same query in-process. With CAPSTAN_BENCH_POSTGRES_URL set, the same
# on PostgreSQL too.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product capstan >/dev/null
swift build -c release --product capstan-bench >/dev/null
"$(swift build -c release --show-bin-path)/capstan-bench" server
