#!/usr/bin/env bash
# Checks that a release build of capstan ignores the test hooks (CAPSTAN_TEST_CRASH_AT): they are
# compiled in only under #if DEBUG. Builds `swift build -c release --product capstan` (minutes
# the first time) unless CAPSTAN_RELEASE_BIN names a binary already built.
#
#   scripts/check-release-hooks.sh            # build, then check
#   CAPSTAN_RELEASE_BIN=path/to/capstan scripts/check-release-hooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CAPSTAN_RELEASE_BIN:-}"
if [[ -z "$bin" ]]; then
  swift build -c release --product capstan >&2
  bin="$(swift build -c release --show-bin-path)/capstan"
fi
home="$(mktemp -d /tmp/capstan-release-hooks.XXXXXX)"
trap 'CAPSTAN_HOME="$home" "$bin" down --force c1 >/dev/null 2>&1 || true; rm -rf "$home"' EXIT

# up.created is the first fault point of `capstan up`: a debug build dies there (SIGKILL, 137).
set +e
CAPSTAN_HOME="$home" CAPSTAN_TEST_CRASH_AT=up.created "$bin" up c1 >"$home/up.out" 2>&1
status=$?
set -e
echo "capstan up with CAPSTAN_TEST_CRASH_AT=up.created: exit $status"
if [[ $status -ne 0 ]]; then
  echo "FAIL: the release build honoured (or failed under) the test hook:" >&2
  cat "$home/up.out" >&2
  exit 1
fi
for hook in CAPSTAN_TEST_CRASH_AT CAPSTAN_TEST_CLOCK_OFFSET_SECONDS; do
  if grep -a -q "$hook" "$bin"; then
    echo "FAIL: the string $hook is still in $bin" >&2
    exit 1
  fi
done
echo "OK: $bin ignores CAPSTAN_TEST_CRASH_AT and contains neither it nor CAPSTAN_TEST_CLOCK_OFFSET_SECONDS"
