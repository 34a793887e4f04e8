#!/usr/bin/env bash
# The control plane at scale (issue 16): 10,000 jobs, 100,000 events and 1,000 clusters behind a
# release `capstan serve`; p50/p99 of the API and of `capstan jobs` through it, 100 concurrent
# clients, each next to the same query in-process — on SQLite, then on a PostgreSQL this script
# starts (scripts/test-servers.sh postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product capstan >/dev/null
swift build -c release --product capstan-bench >/dev/null
pg="$(mktemp -d /tmp/capstan-bench-pg.XXXXXX)"
trap 'scripts/test-servers.sh stop "$pg" >/dev/null 2>&1; rm -rf "$pg"' EXIT
eval "$(scripts/test-servers.sh postgres "$pg")"
export CAPSTAN_BENCH_POSTGRES_URL="$CAPSTAN_TEST_POSTGRES_URL" CAPSTAN_POSTGRES_PASSWORD="$CAPSTAN_TEST_POSTGRES_PASSWORD"
"$(swift build -c release --show-bin-path)/capstan-bench" server
