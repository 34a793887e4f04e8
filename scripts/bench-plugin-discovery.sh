#!/usr/bin/env bash
# `capstan offers` with the local provider only (no providers.<plugin> in config.yaml), run N
# times on a fresh home: median wall time and median peak RSS, and which plugin libraries the
# process mapped. With every plugin on the search path loaded (Capstan before issue 23) the build
# folder's libCapstanPluginAWS.so and libCapstanPluginSim.so were dlopened on every command.
#
#   scripts/bench-plugin-discovery.sh [path/to/capstan] [runs]   (default: the debug build, 15)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-$(swift build --show-bin-path)/capstan}"
runs="${2:-15}"
home="$(mktemp -d /tmp/capstan-bench-discovery.XXXXXX)"
trap 'rm -rf "$home"' EXIT
export CAPSTAN_HOME="$home"
unset CAPSTAN_PLUGIN_PATH
"$bin" offers >/dev/null 2>&1   # warm: the home, the database, the page cache
python3 - "$bin" "$runs" <<'PY'
import os, subprocess, sys, time, statistics
binary, runs = sys.argv[1], int(sys.argv[2])
times, rss = [], []
for _ in range(runs):
    start = time.perf_counter()
    p = subprocess.Popen([binary, "offers"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    times.append((time.perf_counter() - start) * 1000)
    rss.append(usage.ru_maxrss / 1024)
    if status != 0: sys.exit(f"capstan offers failed: status {status}")
# Which plugin libraries a run opens: glibc's loader says so with LD_DEBUG=files.
env = dict(os.environ, LD_DEBUG="files")
out = subprocess.run([binary, "offers"], env=env, capture_output=True, text=True).stderr
plugins = sorted({os.path.basename(line.split("file=", 1)[1].split()[0]) for line in out.splitlines()
                  if "file=" in line and ("CapstanPlugin" in line or "libcapstan-" in line)})
print(f"capstan offers (local only), {runs} runs: median {statistics.median(times):.1f} ms "
      f"(min {min(times):.1f}), median peak RSS {statistics.median(rss):.1f} MiB")
print("plugin libraries opened: " + (", ".join(plugins) or "none"))
PY
