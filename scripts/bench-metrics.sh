#!/usr/bin/env bash
# `/metrics` scrape time with 1,000 jobs (issue 17, goal < 100 ms) from a release `capstan serve`,
# next to GET /v1/jobs?limit=1000 on the same server.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product capstan >/dev/null
swift build -c release --product capstan-bench >/dev/null
"$(swift build -c release --show-bin-path)/capstan-bench" metrics
