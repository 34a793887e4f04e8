#!/usr/bin/env bash
# Builds the benchmark and the plugins in release mode and runs them; prints figures and ratios.
#   scripts/bench.sh [plugin-call|ranking|cold-start|s3|lambda|offers|scale|status|up|jobs|all]
# offers: 100,000 offers from the sim plugin end to end (CAPSTAN_BENCH_OFFERS sets the count);
# scale: `capstan status` with 1,000 clusters, one `up` with 10/100/1,000 clusters, `capstan jobs`
# with 10,000 jobs and 100,000 events (status, up and jobs run one each).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product CapstanPluginSim >/dev/null
swift build -c release --product capstan >/dev/null
case "${1:-all}" in
  offers|scale|status|up|jobs|ranking) ;;  # these load the sim plugin only
  *) swift build -c release --product CapstanPluginAWS >/dev/null ;;
esac
swift build -c release --product capstan-bench >/dev/null
bin="$(swift build -c release --show-bin-path)/capstan-bench"
if [ "${1:-all}" = "s3" ] || [ "${1:-all}" = "all" ]; then
  if [ -z "${CAPSTAN_TEST_S3_ENDPOINT:-}" ]; then
    servers="$(mktemp -d /tmp/capstan-bench-servers.XXXXXX)"
    trap 'scripts/test-servers.sh stop "$servers"; rm -rf "$servers"' EXIT
    eval "$(scripts/test-servers.sh start "$servers")"
  fi
fi
if [ "${1:-all}" = "lambda" ] || [ "${1:-all}" = "all" ]; then
  # The C Lambda plugin and its emulator (plugins/lambda).
  make -s -C plugins/lambda
  emu="$(mktemp -d /tmp/capstan-bench-lambda.XXXXXX)"
  python3 plugins/lambda/emulator/lambda_cloud.py --port-file "$emu/port" --api-key secret_bench_key_0001 \
    --faults '{"boot_seconds": 0, "max_instances": 1000}' >"$emu/log" 2>&1 &
  emu_pid=$!
  trap 'kill $emu_pid 2>/dev/null; rm -rf "$emu"; [ -n "${servers:-}" ] && scripts/test-servers.sh stop "$servers" && rm -rf "$servers"' EXIT
  for _ in $(seq 1 100); do [ -s "$emu/port" ] && break; sleep 0.1; done
  export CAPSTAN_BENCH_LAMBDA_PLUGIN="$PWD/plugins/lambda/build/libcapstan-lambda.so"
  export CAPSTAN_BENCH_LAMBDA_ENDPOINT="http://127.0.0.1:$(cat "$emu/port")/api/v1" CAPSTAN_BENCH_LAMBDA_KEY=secret_bench_key_0001
fi
"$bin" "$@"
