#!/usr/bin/env bash
# Builds a release of Capstan for this machine's Linux and architecture into
# dist/capstan-<version>-linux-<arch>.tar.gz with its SHA-256 (and SHA256SUMS inside):
#
#   capstan                      the CLI, control plane, local node agent and detached job
#                                controller (one binary), linked against the Swift runtime in lib/
#   libCapstanPlugin<Name>.so    the cloud plugins (aws, runpod, gcp; lambda, a C plugin, when
#                                libcurl and jansson's headers are installed), found next to capstan
#   lib/                         the Swift runtime and Foundation that capstan and the Swift
#                                plugins share (one runtime per process: RUNPATH $ORIGIN/lib)
#   capstan-agent                capstan again, with the Swift runtime linked in: what remote
#                                (SSH) nodes receive as their agent, so they need no Swift either
#
#   scripts/release.sh                  # two release builds: ~20 min on 2 cores from scratch
#   CAPSTAN_RELEASE_SCRATCH=DIR scripts/release.sh   # DIR and DIR-dynamic
#
# Why two builds: a plugin is a shared library, and SwiftPM cannot link one with
# --static-swift-stdlib, so capstan and the plugins link one shared Swift runtime, shipped in
# lib/ (a plugin built against another runtime would load a second one into the process). A node
# gets the static build: one file, nothing beside it. With a static Linux Swift SDK installed
# (`swift sdk list` shows a *static-linux* / musl one) capstan-agent is fully static (musl);
# without one, only glibc, libstdc++ and the C libraries every Linux has stay shared
# (SHARED-LIBS.txt lists what each file links).
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^ *static let string = "\(.*\)"$/\1/p' Sources/CLI/Capstan.swift | head -1)"
[[ -n "$version" ]] || { echo "release.sh: cannot read the version from Sources/CLI/Capstan.swift (CapstanVersion.string)" >&2; exit 1; }
arch="$(uname -m)"
scratch="${CAPSTAN_RELEASE_SCRATCH:-.build-release}"
dynamic_scratch="$scratch-dynamic"
name="capstan-$version-linux-$arch"
swift_plugins=(CapstanPluginAWS CapstanPluginRunPod CapstanPluginGCP)

static_sdk="$(swift sdk list 2>/dev/null | grep -m1 -i -E 'static-linux|musl' || true)"
if [[ -n "$static_sdk" ]]; then
  static_flags=(--swift-sdk "$static_sdk")
  kind="fully static (musl, Swift SDK $static_sdk)"
else
  static_flags=(--static-swift-stdlib)
  kind="Swift runtime linked in (--static-swift-stdlib; no static Linux Swift SDK installed), glibc shared"
fi
# The shared build looks for the Swift runtime in lib/ beside the file, never in the toolchain.
dynamic_flags=(-Xswiftc -no-toolchain-stdlib-rpath -Xlinker -rpath -Xlinker '$ORIGIN/lib')

echo "==> building $name: capstan and plugins (shared Swift runtime, shipped in lib/)" >&2
start=$(date +%s)
swift build -c release --scratch-path "$dynamic_scratch" "${dynamic_flags[@]}" --product capstan >&2
for product in "${swift_plugins[@]}"; do
  swift build -c release --scratch-path "$dynamic_scratch" "${dynamic_flags[@]}" --product "$product" >&2
done
dynamic_built=$(( $(date +%s) - start ))
dynamic_bin="$(swift build -c release --scratch-path "$dynamic_scratch" "${dynamic_flags[@]}" --show-bin-path)"

echo "==> building capstan-agent (for remote nodes): $kind" >&2
start=$(date +%s)
swift build -c release --scratch-path "$scratch" "${static_flags[@]}" --product capstan >&2
static_built=$(( $(date +%s) - start ))
static_bin="$(swift build -c release --scratch-path "$scratch" "${static_flags[@]}" --show-bin-path)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
mkdir -p "$dir/lib"
cp "$dynamic_bin/capstan" "$dir/capstan"
cp "$static_bin/capstan" "$dir/capstan-agent"
for product in "${swift_plugins[@]}"; do cp "$dynamic_bin/lib$product.so" "$dir/"; done
# The C plugin: no Swift runtime; links libcurl and jansson (SHARED-LIBS.txt).
lambda_build="$stage/lambda-build"
if make -s -C plugins/lambda BUILD_DIR="$lambda_build" >&2; then
  cp "$lambda_build/libcapstan-lambda.so" "$dir/libCapstanPluginLambda.so"
else
  echo "release.sh: warning: the lambda plugin did not build (install libcurl4-openssl-dev and libjansson-dev); the release goes without it" >&2
fi
# The Swift runtime the shared files need: every library ldd finds in the toolchain's runtime
# folder (the files look only in lib/, still empty: so ldd is pointed at the toolchain's).
swift_runtime="$(cd "$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux" && pwd)"
toolchain_libs="$(for f in "$dir/capstan" "$dir"/libCapstanPlugin*.so; do LD_LIBRARY_PATH="$swift_runtime" ldd "$f"; done | awk -v rt="$swift_runtime/" '$2 == "=>" && index($3, rt) == 1 { print $3 }' | sort -u)"
[[ -n "$toolchain_libs" ]] || { echo "release.sh: ldd found no Swift runtime library behind capstan; was it linked statically?" >&2; exit 1; }
for lib in $toolchain_libs; do cp -L "$lib" "$dir/lib/"; done
strip --strip-unneeded "$dir/capstan" "$dir/capstan-agent" "$dir"/libCapstanPlugin*.so "$dir"/lib/*.so*
{
  echo "capstan $version for linux-$arch"
  echo "capstan and the plugins: the Swift runtime from lib/ (RUNPATH \$ORIGIN/lib)"
  echo "capstan-agent: $kind"
  for f in capstan capstan-agent $(cd "$dir" && ls libCapstanPlugin*.so); do
    echo
    echo "$f:"
    { ldd "$dir/$f" 2>&1 || true; } | sed "s/ (0x[0-9a-f]*)//; s#$dir#.#; s/^/  /"
  done
} > "$dir/SHARED-LIBS.txt"
cat > "$dir/INSTALL.txt" <<INSTALL
Capstan $version (linux-$arch). No Swift toolchain is needed.

  tar xzf $name.tar.gz
  export PATH="\$PWD/$name:\$PATH"
  capstan offers
  capstan plugins list

Keep the folder together: capstan finds its Swift runtime in lib/, the plugins next to it
(libCapstanPlugin*.so), and the agent it ships to remote (SSH) nodes as capstan-agent, which
needs nothing beside it. The built-in recipe (sft) needs python3 with torch on the nodes.
SHARED-LIBS.txt lists the system libraries each file links.
INSTALL
(cd "$dir" && find . -type f ! -name SHA256SUMS | sed 's#^\./##' | sort | xargs sha256sum > SHA256SUMS)
mkdir -p dist
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
size=$(stat -c %s "dist/$name.tar.gz")
unpacked=$(du -sb "$dir" | cut -f1)
echo "==> what remains shared:" >&2
cat "$dir/SHARED-LIBS.txt" >&2
echo "==> contents:" >&2
(cd "$dir" && ls -la . lib) >&2
echo "==> dist/$name.tar.gz: $size bytes ($(( size / 1024 / 1024 )) MiB; $(( unpacked / 1024 / 1024 )) MiB unpacked); shared build ${dynamic_built}s, static agent build ${static_built}s" >&2
cat "dist/$name.tar.gz.sha256" >&2
echo "dist/$name.tar.gz"
