#!/usr/bin/env python3
"""A webhook receiver for the notification tests, on 127.0.0.1 only.

    notify_receiver.py PORT LOG REFUSE SECRET

Answers the first REFUSE POSTs (counted across restarts through LOG) with 503, every later
one with 200, and appends one JSON line per POST to LOG: the path, the idempotency key, the
status it answered, whether `Capstan-Signature` verified against SECRET (the recipe of
docs/notifications.md), and the body. The SECRET comes from the environment variable named
by the argument (never from argv), e.g. `RECEIVER_SECRET`.
"""
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log, refuse, secret_env = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
secret = os.environ[secret_env].encode()


def verify(header, body, tolerance=300):
    """docs/notifications.md: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def seen():
    try:
        with open(log) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = 503 if seen() < refuse else 200
        record = {
            "path": self.path,
            "key": self.headers.get("Capstan-Idempotency-Key"),
            "status": status,
            "signed": "Capstan-Signature" in self.headers,
            "valid": verify(self.headers.get("Capstan-Signature", ""), body),
            "body": body.decode("utf-8", "replace"),
        }
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"no")

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
