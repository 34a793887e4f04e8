#!/usr/bin/env bash
# Builds a release of Capstan for this machine's Linux and architecture: `capstan` (the CLI, the
# control plane, the node agent and the detached job controller in one binary),
# into dist/capstan-<version>-linux-<arch>.tar.gz with its SHA-256 (and SHA256SUMS inside).
#
#   scripts/release.sh                  # ~8-10 min on 2 cores from scratch (.build-release)
#   CAPSTAN_RELEASE_SCRATCH=DIR scripts/release.sh
#
# Static: with a static Linux Swift SDK installed (`swift sdk list` shows a *static-linux* /
# musl one) the binary is fully static (musl). Without one, `--static-swift-stdlib`: the Swift
# runtime and Foundation are linked in, and what remains shared is printed (ldd) and written to
# the tarball's SHARED-LIBS.txt — glibc, libstdc++/libgcc_s, and the C libraries every Linux has.
# The nodes of a job receive this same binary: the controller ships the running `capstan` as
# their agent (docs/remote-nodes.md).
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^ *static let string = "\(.*\)"$/\1/p' Sources/CLI/Capstan.swift | head -1)"
[[ -n "$version" ]] || { echo "release.sh: cannot read the version from Sources/CLI/Capstan.swift (CapstanVersion.string)" >&2; exit 1; }
arch="$(uname -m)"
scratch="${CAPSTAN_RELEASE_SCRATCH:-.build-release}"
name="capstan-$version-linux-$arch"

static_sdk="$(swift sdk list 2>/dev/null | grep -m1 -i -E 'static-linux|musl' || true)"
if [[ -n "$static_sdk" ]]; then
  flags=(--swift-sdk "$static_sdk")
  kind="fully static (musl, Swift SDK $static_sdk)"
else
  flags=(--static-swift-stdlib)
  kind="Swift runtime static (--static-swift-stdlib; no static Linux Swift SDK installed), glibc shared"
fi
echo "==> building $name: $kind" >&2
start=$(date +%s)
# Only `capstan`: SwiftPM cannot link a dynamic library (a plugin) with --static-swift-stdlib
# (ld: cannot find -lCoreFoundation, -l_FoundationCShims), and a Swift plugin linked against the
# shared Swift runtime would need the toolchain's runtime on the machine. The built-in local and
# SSH providers and file:// and s3:// buckets are in the binary; C plugins (plugins/lambda)
# need no Swift runtime and can be dropped next to it.
swift build -c release --scratch-path "$scratch" "${flags[@]}" --product capstan >&2
built=$(( $(date +%s) - start ))
bin="$(swift build -c release --scratch-path "$scratch" "${flags[@]}" --show-bin-path)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
mkdir -p "$dir"
cp "$bin/capstan" "$dir/capstan"
strip --strip-unneeded "$dir/capstan"
{
  echo "capstan $version for linux-$arch: $kind"
  echo
  echo "capstan:"
  { ldd "$dir/capstan" 2>&1 || true; } | sed 's/ (0x[0-9a-f]*)//; s/^/  /'
} > "$dir/SHARED-LIBS.txt"
cat > "$dir/INSTALL.txt" <<EOF
Capstan $version (linux-$arch). No Swift toolchain is needed.

  tar xzf $name.tar.gz
  export PATH="\$PWD/$name:\$PATH"
  capstan offers

\`capstan\` is also the node agent and the detached job controller. Plugins are found next to
it (C plugins need no Swift runtime; a Swift plugin needs the Swift toolchain's runtime). The
built-in recipe (sft) needs python3 with torch on the nodes. SHARED-LIBS.txt lists the system
libraries it still links.
EOF
(cd "$dir" && sha256sum capstan SHARED-LIBS.txt INSTALL.txt > SHA256SUMS)
mkdir -p dist
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
size=$(stat -c %s "dist/$name.tar.gz")
echo "==> shared libraries that remain:" >&2
sed -n '/^capstan:/,/^$/p' "$dir/SHARED-LIBS.txt" >&2
echo "==> dist/$name.tar.gz: $size bytes ($(( size / 1024 / 1024 )) MiB), built in ${built}s" >&2
cat "dist/$name.tar.gz.sha256" >&2
echo "dist/$name.tar.gz"
