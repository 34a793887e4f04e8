#!/usr/bin/env bash
# Checks a release tarball (scripts/release.sh) the way a user without Swift meets it: verifies
# its SHA-256 sums, unpacks it on a fresh path, and runs it under `env -i` with PATH=/usr/bin:/bin
# (no Swift toolchain): `capstan offers`, `capstan plugins list` and `plugins inspect` (every plugin in it loads), ldd
# (Swift libraries only from its lib/; capstan-agent links none), and the demo job (examples/sft-tiny, the built-in sft recipe on 2 local nodes). The job's python3
# (with torch) is the only thing added to PATH, for the nodes.
#
#   scripts/check-release.sh [dist/capstan-<version>-linux-<arch>.tar.gz]
#   CAPSTAN_PYTHON_CACHE=DIR  reuse a cache of the recipe's venv (default: a fresh one; pip)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
tarball="${1:-$(ls -t dist/capstan-*.tar.gz 2>/dev/null | head -1)}"
[[ -n "$tarball" && -f "$tarball" ]] || { echo "check-release.sh: no tarball; run scripts/release.sh first" >&2; exit 1; }
echo "==> sha256sum -c $(basename "$tarball").sha256"
(cd "$(dirname "$tarball")" && sha256sum -c "$(basename "$tarball").sha256")
root="$(mktemp -d /tmp/capstan-release-check.XXXXXX)"
name="$(basename "$tarball" .tar.gz)"
bin="$root/$name/capstan"
clean=(env -i "HOME=$root/home" "CAPSTAN_HOME=$root/capstan-home" PATH=/usr/bin:/bin)
cleanup() { "${clean[@]}" "$bin" down --force demo-release >/dev/null 2>&1 || true; rm -rf "$root"; }
trap cleanup EXIT
mkdir -p "$root/home"
tar -C "$root" -xzf "$tarball"
echo "==> unpacked into $root/$name:"
ls -la "$root/$name"
(cd "$root/$name" && sha256sum -c --quiet SHA256SUMS) && echo "SHA256SUMS: OK"
echo "==> PATH=/usr/bin:/bin has no Swift toolchain:"
if "${clean[@]}" sh -c 'command -v swift || command -v swiftc || ls /usr/lib/swift /usr/lib/libswiftCore.so 2>/dev/null'; then
  echo "FAIL: a Swift toolchain is reachable on the clean PATH" >&2; exit 1
fi
echo "(none)"
echo "==> ldd capstan and the plugins: every Swift library from the release's lib/"
for f in "$bin" "$root/$name"/libCapstanPlugin*.so; do
  libs="$(ldd "$f" 2>&1 || true)"
  echo "$(basename "$f"):"; echo "$libs" | sed 's/^/  /'
  if grep -q "not found" <<<"$libs"; then echo "FAIL: $(basename "$f") misses a library" >&2; exit 1; fi
  if grep -i swift <<<"$libs" | grep -v -q "=> $root/$name/lib/"; then echo "FAIL: $(basename "$f") links a Swift library from outside the release" >&2; exit 1; fi
done
echo "==> ldd capstan-agent (what remote nodes receive; no shared Swift library):"
libs="$(ldd "$root/$name/capstan-agent" 2>&1 || true)"   # a fully static binary: "not a dynamic executable", exit 1
echo "$libs"
if grep -q -i swift <<<"$libs"; then echo "FAIL: capstan-agent links a shared Swift library" >&2; exit 1; fi
"${clean[@]}" "$root/$name/capstan-agent" --version
echo "==> capstan --version"
"${clean[@]}" "$bin" --version
echo "==> capstan offers"
"${clean[@]}" "$bin" offers
echo "==> capstan plugins list"
"${clean[@]}" "$bin" plugins list
echo "==> capstan plugins inspect, for each shipped plugin (it loads, on the release's one Swift runtime)"
for f in "$root/$name"/libCapstanPlugin*.so; do
  p="$(basename "$f" .so)"; p="${p#libCapstanPlugin}"; p="${p,,}"
  if ! out="$("${clean[@]}" "$bin" plugins inspect "$p" 2>&1)" || ! grep -q "^path: *$f$" <<<"$out"; then
    echo "$out" >&2; echo "FAIL: plugin $p did not load from the release" >&2; exit 1
  fi
  sed -n '1,2p' <<<"$out"
done
py="$(dirname "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')")"
cp -r "$repo/examples/sft-tiny" "$root/sft-tiny"
echo "==> capstan launch sft-tiny/job.yaml   (PATH=/usr/bin:/bin:$py, for the nodes' python3 with torch)"
start=$(date +%s)
env -i "HOME=$root/home" "CAPSTAN_HOME=$root/capstan-home" "PATH=/usr/bin:/bin:$py" \
  ${CAPSTAN_PYTHON_CACHE:+"CAPSTAN_PYTHON_CACHE=$CAPSTAN_PYTHON_CACHE"} \
  "$bin" launch "$root/sft-tiny/job.yaml" \
  | grep -v -e '"step": [0-9]*[1-9],' -e '"step": [0-9]*[1-46-9]0,' -e checkpoint_written -e checkpoint_uploaded
echo "==> the demo job took $(( $(date +%s) - start )) s"
"${clean[@]}" "$bin" jobs
"${clean[@]}" "$bin" metrics "$("${clean[@]}" "$bin" jobs --json | sed -n 's/.*"id" : "\(sft-tiny-[0-9a-f]*\)".*/\1/p' | head -1)" --rows 5
echo "==> OK: the release ran offers and the demo job with no Swift toolchain"
