#!/usr/bin/env python3
"""A Lambda Cloud API server for tests: the public API's paths, field names, status values and
error bodies (docs/plugins/lambda.md lists the sources), with switches for the faults a real
cloud has. Standard library only; listens on 127.0.0.1 only.

    python3 lambda_cloud.py --port 0 --port-file F --api-key KEY [--faults JSON]
                            [--tls-cert PEM --tls-key PEM]   (HTTPS, as the real API; the
                            /_emulator/ paths then also answer over plain HTTP on the port
                            written to F.admin)

API (base /api/v1; auth `Authorization: Bearer KEY` or HTTP Basic with the key as user):
    GET  /instance-types                 {data: {name: {instance_type, regions_with_capacity_available}}}
    POST /instance-operations/launch     {region_name, instance_type_name, ssh_key_names:[1], name?,
                                          user_data?, tags?:[{key,value}], image?, file_system_names?,
                                          quantity?} → {data: {instance_ids}}
    GET  /instances, GET /instances/{id}
    POST /instance-operations/terminate  {instance_ids} → {data: {terminated_instances}}
    GET/POST /ssh-keys, DELETE /ssh-keys/{id};  GET /images
Errors: {"error": {"code", "message", "suggestion"}}. Instance status: booting → active
(or unhealthy); terminating → terminated; terminated instances are forgotten after a while.

Switches (POST /_emulator/faults with a JSON object, merged; GET shows them; no auth):
    no_capacity               bool   every region lists no capacity and every launch fails
    capacity                  {type: [region]} regions_with_capacity_available per type
    launch_capacity_failures  int    the next N launches fail insufficient-capacity anyway
    rate_limit                null | {requests_per_second, burst, launch_interval_seconds}
    retry_after_header        bool   send Retry-After with 429 (Lambda's docs do not say it does)
    boot_seconds              float  booting → active (slow boot: make it long)
    unhealthy_on_boot         bool   booting → unhealthy instead
    terminate_seconds         float  terminating → terminated
    forget_terminated_seconds float  terminated instances then vanish from the API
    honor_quantity            bool   false: `quantity` is ignored (one instance per launch)
    max_instances             int    live instances allowed (global/quota-exceeded beyond)
    server_errors             int    the next N API requests answer HTTP 502 with an HTML page
    hosts                     null | [{address, authorized_keys, netns?, sshd_pid_file?, wipe?}]
                                     real machines to hand out (tests: network namespaces running
                                     sshd): each launched instance gets a free host's address, and
                                     none free is insufficient capacity. Once active, the launch's
                                     SSH key is written to the host's authorized_keys (as the
                                     cloud's image does); once terminating, the machine is gone:
                                     the key is removed, every process in `netns` but its sshd is
                                     killed and the `wipe` folders are removed.
GET /_emulator/state: request counters (`launched`: instances ever created, each billed from its
launch until it is terminated; `terminated`) and every instance, with `billed_seconds`, for
assertions; POST /_emulator/reset.
"""
import argparse
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REGIONS = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-south-1": "Texas, USA",
    "us-midwest-1": "Illinois, USA",
    "europe-central-1": "Germany",
    "asia-northeast-1": "Tokyo, Japan",
}

# name: (description, gpu_description, price_cents_per_hour, vcpus, memory_gib, storage_gib, gpus)
CATALOG = {
    "gpu_1x_a10": ("1x A10 (24 GB PCIe)", "A10 (24 GB PCIe)", 75, 30, 200, 1400, 1),
    "gpu_1x_a100_sxm4": ("1x A100 (40 GB SXM4)", "A100 (40 GB SXM4)", 129, 30, 200, 512, 1),
    "gpu_8x_a100_80gb_sxm4": ("8x A100 (80 GB SXM4)", "A100 (80 GB SXM4)", 1432, 240, 1800, 19500, 8),
    "gpu_1x_h100_pcie": ("1x H100 (80 GB PCIe)", "H100 (80 GB PCIe)", 249, 26, 200, 1000, 1),
    "gpu_1x_h100_sxm5": ("1x H100 (80 GB SXM5)", "H100 (80 GB SXM5)", 329, 26, 225, 2750, 1),
    "gpu_8x_h100_sxm5": ("8x H100 (80 GB SXM5)", "H100 (80 GB SXM5)", 2392, 208, 1800, 24780, 8),
    "gpu_1x_gh200": ("1x GH200 (96 GB)", "GH200 (96 GB)", 149, 64, 432, 4096, 1),
    "gpu_8x_b200_sxm6": ("8x B200 (180 GB SXM6)", "B200 (180 GB SXM6)", 3992, 208, 2900, 22000, 8),
}

DEFAULT_CAPACITY = {
    "gpu_1x_a10": ["us-east-1", "us-west-1"],
    "gpu_1x_a100_sxm4": ["us-east-1"],
    "gpu_8x_a100_80gb_sxm4": ["us-midwest-1"],
    "gpu_1x_h100_pcie": ["us-west-1", "us-south-1"],
    "gpu_1x_h100_sxm5": ["us-south-1"],
    "gpu_8x_h100_sxm5": ["us-east-1", "us-south-1", "us-west-1"],
    "gpu_1x_gh200": ["us-east-1"],
    "gpu_8x_b200_sxm6": [],
}

DEFAULT_FAULTS = {
    "no_capacity": False,
    "capacity": None,
    "launch_capacity_failures": 0,
    "rate_limit": None,
    "retry_after_header": False,
    "boot_seconds": 1.0,
    "unhealthy_on_boot": False,
    "terminate_seconds": 0.5,
    "forget_terminated_seconds": 30.0,
    "honor_quantity": True,
    "max_instances": 100,
    "server_errors": 0,
    "hosts": None,
}


class ApiError(Exception):
    def __init__(self, status, code, message, suggestion=None):
        super().__init__(message)
        self.status, self.code, self.message, self.suggestion = status, code, message, suggestion


def invalid(message):
    return ApiError(400, "global/invalid-parameters", message)


class Cloud:
    def __init__(self, api_keys, faults):
        self.lock = threading.Lock()
        self.api_keys = set(api_keys)
        self.initial_faults = faults
        self.reset()

    def reset(self):
        with self.lock:
            self.faults = dict(DEFAULT_FAULTS)
            self.faults.update(self.initial_faults)
            self.instances = {}  # id → record
            self.ssh_keys = {}  # id → {id, name, public_key}
            self.counters = {"requests": 0, "launch_requests": 0, "launched": 0, "terminated": 0, "rate_limited": 0,
                             "unauthorized": 0, "terminate_requests": 0, "ssh_keys_created": 0}
            self.buckets = {}
            self.last_launch = {}
            self.next_ip = 1

    # ---- rate limits: a token bucket per key, and a minimum interval between launches ----
    def check_rate(self, key, is_launch):
        limits = self.faults.get("rate_limit")
        if not limits:
            return None
        now = time.monotonic()
        rps = float(limits.get("requests_per_second", 1.0))
        burst = float(limits.get("burst", 2))
        tokens, at = self.buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rps)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / rps
        if is_launch:
            interval = float(limits.get("launch_interval_seconds", 10))
            last = self.last_launch.get(key)
            if last is not None and now - last < interval:
                self.buckets[key] = (tokens, now)
                return interval - (now - last)
            self.last_launch[key] = now
        self.buckets[key] = (tokens - 1, now)
        return None

    # ---- instance lifecycle, advanced lazily on every read ----
    def advance(self):
        now = time.monotonic()
        f = self.faults
        for iid in list(self.instances):
            r = self.instances[iid]
            if r["status"] == "booting" and now - r["created"] >= f["boot_seconds"]:
                r["status"] = "unhealthy" if f["unhealthy_on_boot"] else "active"
                if r["status"] == "active":
                    r["ip"], r["private_ip"] = r["pending_ip"], r["pending_private_ip"]
                    if r.get("host"):
                        self.authorize(r)
            if r["status"] == "terminating" and now - r["terminate_at"] >= f["terminate_seconds"]:
                r["status"] = "terminated"
                r["terminated_at"] = now
                self.counters["terminated"] += 1
            if r["status"] == "terminated" and now - r["terminated_at"] >= f["forget_terminated_seconds"]:
                del self.instances[iid]

    # ---- hosts: real machines behind instances ----
    def free_host(self, taken=()):
        """A host of the `hosts` switch that no live instance holds (nor `taken`), or None."""
        held = {r["host"]["address"] for r in self.instances.values() if r.get("host") and r["status"] != "terminated"}
        held.update(h["address"] for h in taken)
        return next((h for h in self.faults["hosts"] if h["address"] not in held), None)

    def authorize(self, r):
        key = next((k["public_key"] for k in self.ssh_keys.values() if k["name"] in r["ssh_key_names"]), None)
        if key:
            write_atomically(r["host"]["authorized_keys"], key + "\n")

    def release_host(self, r):
        """The machine behind `r` is gone: no login, no process, no files left."""
        h = r["host"]
        write_atomically(h["authorized_keys"], "")
        if h.get("netns"):
            keep = ""
            try:
                keep = open(h["sshd_pid_file"]).read().strip() if h.get("sshd_pid_file") else ""
            except OSError:
                pass
            pids = subprocess.run(["ip", "netns", "pids", h["netns"]], capture_output=True, text=True).stdout.split()
            for pid in pids:
                if pid != keep:
                    try:
                        os.kill(int(pid), 9)
                    except (OSError, ValueError):
                        pass
        for folder in h.get("wipe") or []:
            subprocess.run(["rm", "-rf", "--one-file-system", folder], capture_output=True)

    def capacity(self, type_name):
        if self.faults["no_capacity"]:
            return []
        table = self.faults.get("capacity") or DEFAULT_CAPACITY
        return list(table.get(type_name, []))

    def instance_type(self, name):
        d, g, cents, vcpus, mem, disk, gpus = CATALOG[name]
        return {"name": name, "description": d, "gpu_description": g, "price_cents_per_hour": cents,
                "specs": {"vcpus": vcpus, "memory_gib": mem, "storage_gib": disk, "gpus": gpus}}

    def view(self, r):
        out = {k: r[k] for k in ("id", "name", "status", "hostname", "ssh_key_names", "file_system_names", "region",
                                  "instance_type", "tags")}
        if r["ip"]:
            out["ip"] = r["ip"]
            out["private_ip"] = r["private_ip"]
            out["jupyter_url"] = "https://jupyter-%s.emulator.invalid" % r["id"][:8]
            out["jupyter_token"] = r["id"][8:24]
        out["actions"] = {"restart": {"available": r["status"] == "active"},
                          "terminate": {"available": r["status"] in ("booting", "active", "unhealthy")}}
        return out

    # ---- API ----
    def instance_types(self):
        return {name: {"instance_type": self.instance_type(name),
                       "regions_with_capacity_available": [{"name": r, "description": REGIONS[r]} for r in self.capacity(name)]}
                for name in CATALOG}

    def launch(self, body):
        self.counters["launch_requests"] += 1
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.")
        region, type_name = body.get("region_name"), body.get("instance_type_name")
        if not isinstance(region, str) or not region:
            raise invalid("region_name is required.")
        if not isinstance(type_name, str) or not type_name:
            raise invalid("instance_type_name is required.")
        if region not in REGIONS:
            raise invalid("Invalid region name: %s." % region)
        if type_name not in CATALOG:
            raise invalid("Invalid instance type name: %s." % type_name)
        keys = body.get("ssh_key_names")
        if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], str):
            raise invalid("Exactly one SSH key must be specified.")
        if keys[0] not in {k["name"] for k in self.ssh_keys.values()}:
            raise invalid("SSH key %s does not exist." % keys[0])
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            raise invalid("Instance name must be a string of 64 characters or fewer.")
        user_data = body.get("user_data")
        if user_data is not None and (not isinstance(user_data, str) or len(user_data.encode()) > 1 << 20):
            raise invalid("user_data must be plain text of at most 1 MB.")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, dict) and isinstance(t.get("key"), str)
                                                 and isinstance(t.get("value"), str) for t in tags):
            raise invalid("tags must be a list of {key, value} strings.")
        quantity = body.get("quantity", 1)
        if not isinstance(quantity, int) or quantity < 1:
            raise invalid("quantity must be a positive integer.")
        if not self.faults["honor_quantity"]:
            quantity = 1
        for k in body:
            if k not in ("region_name", "instance_type_name", "ssh_key_names", "file_system_names", "name", "image",
                         "user_data", "tags", "quantity", "hostname", "firewall_rulesets", "file_system_mounts"):
                raise invalid("Unknown field: %s." % k)
        insufficient = ApiError(400, "instance-operations/launch/insufficient-capacity",
                                "Not enough capacity to fulfill launch request.",
                                "Choose an instance type with more availability, or try again later.")
        if region not in self.capacity(type_name):
            raise insufficient
        hosts = []
        if self.faults["hosts"] is not None:
            for _ in range(quantity):
                h = self.free_host(hosts)
                if h is None:
                    raise insufficient
                hosts.append(h)
        if self.faults["launch_capacity_failures"] > 0:
            self.faults["launch_capacity_failures"] -= 1
            raise insufficient
        live = sum(1 for r in self.instances.values() if r["status"] not in ("terminating", "terminated"))
        if live + quantity > self.faults["max_instances"]:
            raise ApiError(400, "global/quota-exceeded", "Quota exceeded: your account may run %d instances."
                           % self.faults["max_instances"], "Terminate instances, or ask Lambda support for a higher limit.")
        ids = []
        for k in range(quantity):
            iid = uuid.uuid4().hex
            n = self.next_ip
            self.next_ip += 1
            # Addresses on loopback only (or the test's own network-namespace hosts): nothing a
            # test does may reach outside this machine.
            ip = hosts[k]["address"] if hosts else "127.0.%d.%d" % (2 + n // 250, 1 + n % 250)
            self.instances[iid] = {
                "id": iid, "name": name, "status": "booting", "ip": None, "private_ip": None,
                "pending_ip": ip, "pending_private_ip": ip, "hostname": ip.replace(".", "-") + ".emulator.invalid",
                "ssh_key_names": list(keys), "file_system_names": list(body.get("file_system_names") or []),
                "region": {"name": region, "description": REGIONS[region]},
                "instance_type": self.instance_type(type_name), "tags": [dict(t) for t in tags],
                "user_data": user_data, "created": time.monotonic(), "host": hosts[k] if hosts else None,
            }
            ids.append(iid)
        self.counters["launched"] += len(ids)
        return {"instance_ids": ids}

    def get_instance(self, iid):
        r = self.instances.get(iid)
        if r is None:
            raise ApiError(404, "global/object-does-not-exist", "Specified instance does not exist.")
        return self.view(r)

    def terminate(self, body):
        self.counters["terminate_requests"] += 1
        ids = body.get("instance_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise invalid("instance_ids must be a non-empty list of instance ids.")
        for iid in ids:
            if iid not in self.instances:
                raise ApiError(404, "global/object-does-not-exist", "Specified instance does not exist.")
        now = time.monotonic()
        for iid in ids:
            r = self.instances[iid]
            if r["status"] not in ("terminating", "terminated"):
                r["status"], r["terminate_at"] = "terminating", now
                if r.get("host"):
                    self.release_host(r)
        return {"terminated_instances": [self.view(self.instances[i]) for i in ids]}

    def add_key(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            raise invalid("name is required.")
        if any(k["name"] == body["name"] for k in self.ssh_keys.values()):
            raise ApiError(400, "global/duplicate", "An SSH key with name %s already exists." % body["name"])
        if len(self.ssh_keys) >= 1024:
            raise ApiError(400, "global/quota-exceeded", "You can have at most 1024 SSH keys.", "Delete keys you no longer use.")
        key = {"id": uuid.uuid4().hex, "name": body["name"]}
        public = body.get("public_key")
        if public is None:
            with tempfile.TemporaryDirectory() as d:
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d + "/k"], check=True)
                key["public_key"] = open(d + "/k.pub").read().strip()
                key["private_key"] = open(d + "/k").read()
        elif not isinstance(public, str) or not public.startswith(("ssh-", "ecdsa-")) or len(public.split()) < 2:
            raise invalid("Invalid public key.")
        else:
            key["public_key"] = public.strip()
        self.ssh_keys[key["id"]] = {k: v for k, v in key.items() if k != "private_key"}
        self.counters["ssh_keys_created"] += 1
        return key


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cloud = None  # set in main

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every keep-alive answer back by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_json(self, status, doc, headers=()):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise invalid("The request body is not valid JSON.")

    def api_key(self):
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        if auth.startswith("Basic "):
            try:
                return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except ValueError:
                return None
        return None

    def handle_any(self, method):
        cloud = self.cloud
        path = self.path.split("?", 1)[0]
        try:
            # Read the body first, whatever the answer: an unread body would be taken for the
            # next request on this keep-alive connection.
            body = self.read_body() if method in ("POST", "PUT") else None
            if path.startswith("/_emulator/"):
                return self.admin(method, path, body)
            with cloud.lock:
                cloud.counters["requests"] += 1
                if cloud.faults["server_errors"] > 0:
                    cloud.faults["server_errors"] -= 1
                    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                    self.send_response(502)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                key = self.api_key()
                if key not in cloud.api_keys:
                    cloud.counters["unauthorized"] += 1
                    raise ApiError(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                                   "Check your API key or create a new one, then try again.")
                wait = cloud.check_rate(key, method == "POST" and path == "/api/v1/instance-operations/launch")
                if wait is not None:
                    cloud.counters["rate_limited"] += 1
                    headers = [("Retry-After", "%.0f" % max(1, wait + 0.5))] if cloud.faults["retry_after_header"] else []
                    # The code of Lambda's 429 body is not documented; the status is what clients act on.
                    return self.send_json(429, {"error": {"code": "global/too-many-requests",
                                                          "message": "Too many requests. Slow down.",
                                                          "suggestion": "Wait, then try again."}}, headers)
                cloud.advance()
                data = self.route(method, path, body)
            self.send_json(200, {"data": data})
        except ApiError as e:
            err = {"code": e.code, "message": e.message}
            if e.suggestion:
                err["suggestion"] = e.suggestion
            self.send_json(e.status, {"error": err})

    def route(self, method, path, body):
        cloud = self.cloud
        if not path.startswith("/api/v1/"):
            raise ApiError(404, "global/object-does-not-exist", "Not found.")
        p = path[len("/api/v1"):]
        if method == "GET" and p == "/instance-types":
            return cloud.instance_types()
        if method == "POST" and p == "/instance-operations/launch":
            return cloud.launch(body)
        if method == "POST" and p == "/instance-operations/terminate":
            return cloud.terminate(body)
        if method == "GET" and p == "/instances":
            return [cloud.view(r) for r in cloud.instances.values()]
        if method == "GET" and p.startswith("/instances/"):
            return cloud.get_instance(p[len("/instances/"):])
        if method == "GET" and p == "/ssh-keys":
            return list(cloud.ssh_keys.values())
        if method == "POST" and p == "/ssh-keys":
            return cloud.add_key(body)
        if method == "DELETE" and p.startswith("/ssh-keys/"):
            if cloud.ssh_keys.pop(p[len("/ssh-keys/"):], None) is None:
                raise ApiError(404, "global/object-does-not-exist", "Specified SSH key does not exist.")
            return {}
        if method == "GET" and p == "/images":
            return [{"id": "img-lambda-stack-22-04", "name": "Lambda Stack 22.04", "family": "lambda-stack-22-04",
                     "version": "22.04", "architecture": "x86_64", "region": {"name": r}} for r in REGIONS]
        raise ApiError(404, "global/object-does-not-exist", "Not found.")

    def admin(self, method, path, body):
        cloud = self.cloud
        if path == "/_emulator/faults":
            if method == "POST":
                update = body or {}
                unknown = [k for k in update if k not in DEFAULT_FAULTS]
                if unknown:
                    return self.send_json(400, {"error": "unknown switches: %s" % unknown})
                with cloud.lock:
                    cloud.faults.update(update)
            with cloud.lock:
                return self.send_json(200, cloud.faults)
        if path == "/_emulator/state":
            with cloud.lock:
                cloud.advance()
                return self.send_json(200, {"counters": cloud.counters, "ssh_keys": list(cloud.ssh_keys.values()),
                                            "instances": [dict(cloud.view(r), user_data=r["user_data"],
                                                               billed_seconds=round((r.get("terminate_at") or time.monotonic()) - r["created"], 3))
                                                          for r in cloud.instances.values()]})
        if path == "/_emulator/reset" and method == "POST":
            cloud.reset()
            return self.send_json(200, {})
        self.send_json(404, {"error": "unknown emulator path"})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_PUT(self):
        self.handle_any("PUT")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument("--api-key", action="append", default=[], help="an accepted API key (repeatable)")
    ap.add_argument("--faults", default="{}", help="initial switches, a JSON object")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="… and this private key (PEM)")
    args = ap.parse_args()
    faults = json.loads(args.faults)
    unknown = [k for k in faults if k not in DEFAULT_FAULTS]
    if unknown:
        sys.exit("unknown switches: %s" % unknown)
    Handler.cloud = Cloud(args.api_key or [os.environ.get("LAMBDA_EMULATOR_API_KEY", "secret_emulator_key")], faults)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    scheme = "http"
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
        # The switches, over plain HTTP on a second port.
        admin = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        admin.daemon_threads = True
        threading.Thread(target=admin.serve_forever, daemon=True).start()
        if args.port_file:
            write_atomically(args.port_file + ".admin", str(admin.server_address[1]))
    if args.port_file:
        write_atomically(args.port_file, str(server.server_address[1]))
    print("lambda emulator on %s://127.0.0.1:%d/api/v1" % (scheme, server.server_address[1]), flush=True)
    server.serve_forever()


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
