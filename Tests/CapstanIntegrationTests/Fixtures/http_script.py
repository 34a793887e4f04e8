"""A small HTTP/1.1 server on 127.0.0.1 for tests that must see every request a client makes.

    python3 http_script.py --port-file F --script JSON
        Answers the Nth request with the Nth item of the JSON list (the last item once the list
        is used up): {"status": 503, "headers": {"Retry-After": "1"}, "body": "..."}, or
        {"close": true} to drop the connection without an answer.
    python3 http_script.py --port-file F --upstream http://127.0.0.1:PORT --hold SECONDS
        Forwards every request to the upstream server, holding each SECONDS first, and counts
        how many are in flight at once.

GET /_log (never scripted or forwarded) answers {"requests": [{"time", "method", "path",
"sha256", "headers"}...], "in_flight": N, "max_in_flight": N}; time is time.monotonic().
"""
import argparse
import hashlib
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

ap = argparse.ArgumentParser()
ap.add_argument("--port-file", required=True)
ap.add_argument("--script")
ap.add_argument("--upstream")
ap.add_argument("--hold", type=float, default=0)
args = ap.parse_args()

lock = threading.Lock()
log = []
state = {"in_flight": 0, "max_in_flight": 0}
script = json.loads(args.script) if args.script else None
upstream = urllib.parse.urlsplit(args.upstream) if args.upstream else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_log":
            with lock:
                out = json.dumps({"requests": log, **state}).encode()
            return self.reply(200, {"Content-Type": "application/json"}, out)
        with lock:
            n = len(log)
            log.append({"time": time.monotonic(), "method": self.command, "path": self.path,
                        "sha256": hashlib.sha256(body).hexdigest(), "headers": dict(self.headers.items())})
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if script is not None:
                item = script[min(n, len(script) - 1)]
                if item.get("close"):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                return self.reply(item.get("status", 200), item.get("headers", {}), item.get("body", "").encode())
            time.sleep(args.hold)
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            conn.close()
            passed = {k: v for k, v in r.getheaders() if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            self.reply(r.status, passed, data)
        finally:
            with lock:
                state["in_flight"] -= 1

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(args.port_file + ".tmp", args.port_file)
server.serve_forever()
