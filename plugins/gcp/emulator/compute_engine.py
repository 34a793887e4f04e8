#!/usr/bin/env python3
"""A Compute Engine API server for tests: the documented paths, field names, operation objects,
status values and error bodies of compute/v1 (docs/plugins/gcp.md lists the sources), an
OAuth2 token endpoint that checks RS256-signed service-account JWTs, and switches for the
faults a real cloud has. Standard library only; 127.0.0.1 only.

    python3 compute_engine.py --port 0 --port-file F --project P --client-email E
                              --jwt-modulus HEX [--jwt-exponent 65537] [--faults JSON]

API (Authorization: Bearer <a token this server issued and that has not expired>):
    POST /token    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT
                   → {access_token, expires_in, token_type: "Bearer"}; a bad signature, issuer,
                   audience, scope or exp > iat+3600 → 400 {error: "invalid_grant", error_description}
    GET  /compute/v1/projects/P/zones                          {items: [{name, region, status}]}
    GET  /compute/v1/projects/P/aggregated/machineTypes        {items: {"zones/Z": {machineTypes: […]}}}
    POST /compute/v1/projects/P/zones/Z/instances?requestId=U  Operation (the same requestId → the same operation)
    GET  /compute/v1/projects/P/zones/Z/instances/NAME         Instance
    GET  /compute/v1/projects/P/aggregated/instances?filter=labels.K="V" AND …
    DELETE /compute/v1/projects/P/zones/Z/instances/NAME       Operation (404 notFound when unknown)
    GET  /compute/v1/projects/P/zones/Z/operations/OP          Operation {name, status: PENDING|RUNNING|DONE,
                                                                error?: {errors: [{code, message}]}, httpErrorStatusCode?}
Errors: {"error": {"code": N, "message", "errors": [{"message", "domain", "reason"}], "status"}}.
Instance status: PROVISIONING → STAGING → RUNNING (boot_seconds); a spot instance preempted
(POST /_emulator/preempt {"name"}) → TERMINATED with a `compute.instances.preempted` operation.

Switches (POST /_emulator/faults, merged; GET shows them; no auth):
    no_capacity_zones  [zone]  inserts there end DONE with ZONE_RESOURCE_POOL_EXHAUSTED
    quota_exceeded     bool    inserts end DONE with QUOTA_EXCEEDED (GPUS_ALL_REGIONS)
    rate_limited       int     the next N API requests answer 403 rateLimitExceeded
    rate_limited_429   int     the next N API requests answer 429 RESOURCE_EXHAUSTED
    server_errors      int     the next N API requests answer 503
    token_ttl          float   seconds a token lives (default 3600)
    boot_seconds       float   (default 0.3)
    operation_seconds  float   an operation is RUNNING this long before DONE (default 0.2)
    page_size          int     aggregated lists answer this many resources a page (nextPageToken)
    delete_seconds     float   a deleted instance stays STOPPING this long (default 0: gone at
                               once); another DELETE meanwhile answers 400 resourceNotReady
                               unless it repeats the first one's requestId
    preempt_delete_seconds float a preempted SPOT instance with instanceTerminationAction
                               DELETE stays TERMINATED this long, then is deleted (default 1);
                               one with STOP stays TERMINATED (its disk billed) until deleted
GET /_emulator/state: counters (tokens issued, requests, rejected_tokens, rate_limited, …),
instances and the last insert body seen; POST /_emulator/reset.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

ZONES = {"us-central1-a": "us-central1", "us-central1-b": "us-central1", "europe-west4-a": "europe-west4"}
# Accelerator-optimized machine types (accelerator-optimized-machines docs): A3 (H100 80GB),
# A2 (A100 40GB / 80GB), G2 (L4).
MACHINE_TYPES = [
    ("a3-highgpu-8g", 208, 1872 * 1024, "nvidia-h100-80gb", 8),
    ("a3-megagpu-8g", 208, 1872 * 1024, "nvidia-h100-mega-80gb", 8),
    ("a2-highgpu-1g", 12, 85 * 1024, "nvidia-tesla-a100", 1),
    ("a2-highgpu-8g", 96, 680 * 1024, "nvidia-tesla-a100", 8),
    ("a2-ultragpu-8g", 96, 1360 * 1024, "nvidia-a100-80gb", 8),
    ("g2-standard-4", 4, 16 * 1024, "nvidia-l4", 1),
    ("g2-standard-96", 96, 384 * 1024, "nvidia-l4", 8),
    ("n2-standard-8", 8, 32 * 1024, None, 0),
]
# Which zones have which types (A3 mega only in us-central1-a here).
ZONE_TYPES = {
    "us-central1-a": {m[0] for m in MACHINE_TYPES},
    "us-central1-b": {m[0] for m in MACHINE_TYPES if m[0] != "a3-megagpu-8g"},
    "europe-west4-a": {"a3-highgpu-8g", "a2-highgpu-8g", "g2-standard-4", "n2-standard-8"},
}
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class State:
    def __init__(self, a):
        self.lock = threading.Lock()
        self.project = a.project
        self.client_email = a.client_email
        self.n = int(a.jwt_modulus, 16)
        self.e = a.jwt_exponent
        self.faults = {"token_ttl": 3600, "boot_seconds": 0.3, "operation_seconds": 0.2}
        self.faults.update(json.loads(a.faults))
        self.tokens = {}
        self.instances = {}  # (zone, name) → instance
        self.operations = {}  # name → operation
        self.request_ids = {}  # requestId → operation name
        self.counters = {"tokens": 0, "requests": 0, "rejected_tokens": 0, "rate_limited": 0, "inserts": 0, "deletes": 0}
        self.last_insert = None
        self.base = "https://www.googleapis.com/compute/v1/projects/%s" % a.project

    def count(self, k):
        self.counters[k] = self.counters.get(k, 0) + 1


def api_error(code, message, reason, status, domain="global"):
    return code, {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": domain, "reason": reason}], "status": status}}


def verify_jwt(state, assertion):
    """Checks an RS256 service-account JWT the way Google's token endpoint does; returns an
    error description or None."""
    try:
        h64, c64, s64 = assertion.split(".")
        header = json.loads(b64url_decode(h64))
        claims = json.loads(b64url_decode(c64))
        sig = int.from_bytes(b64url_decode(s64), "big")
    except Exception:
        return "Invalid JWT: not three base64url JSON parts"
    if header.get("alg") != "RS256":
        return "Invalid JWT: alg must be RS256"
    k = (state.n.bit_length() + 7) // 8
    em = pow(sig, state.e, state.n).to_bytes(k, "big")
    digest = hashlib.sha256((h64 + "." + c64).encode()).digest()
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(SHA256_DIGEST_INFO) - 32) + b"\x00" + SHA256_DIGEST_INFO + digest
    if em != expected:
        return "Invalid JWT Signature."
    now = time.time()
    if claims.get("iss") != state.client_email:
        return "Invalid issuer: %s" % claims.get("iss")
    if not str(claims.get("aud", "")).endswith("/token"):
        return "Invalid audience"
    if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")).split():
        return "Invalid scope"
    iat, exp = claims.get("iat", 0), claims.get("exp", 0)
    if exp - iat > 3600 or exp < now or iat > now + 300:
        return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
    return None


def new_operation(state, zone, op_type, target, error=None, http_status=None):
    name = "operation-%d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:12])
    op = {
        "kind": "compute#operation", "id": str(uuid.uuid4().int % 10**19), "name": name,
        "zone": "%s/zones/%s" % (state.base, zone), "operationType": op_type,
        "targetLink": "%s/zones/%s/instances/%s" % (state.base, zone, target), "status": "PENDING", "progress": 0,
        "insertTime": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
        "selfLink": "%s/zones/%s/operations/%s" % (state.base, zone, name),
        "_doneAt": time.time() + float(state.faults.get("operation_seconds", 0.2)), "_error": error, "_http": http_status,
    }
    state.operations[name] = op
    return op


def op_view(op):
    now = time.time()
    out = {k: v for k, v in op.items() if not k.startswith("_")}
    if now >= op["_doneAt"]:
        out["status"] = "DONE"
        out["progress"] = 100
        out["endTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime(op["_doneAt"]))
        if op["_error"]:
            out["error"] = {"errors": [op["_error"]]}
            out["httpErrorStatusCode"] = op["_http"]
            out["httpErrorMessage"] = "SERVICE UNAVAILABLE" if op["_http"] == 503 else "FORBIDDEN"
    elif now >= op["_doneAt"] - float(0.1):
        out["status"] = "RUNNING"
    return out


def instance_view(state, inst):
    now = time.time()
    out = {k: v for k, v in inst.items() if not k.startswith("_")}
    if inst["status"] == "PROVISIONING":
        if now >= inst["_bootAt"]:
            inst["status"] = out["status"] = "RUNNING"
        elif now >= inst["_bootAt"] - 0.1:
            out["status"] = "STAGING"
    return out


def insert(state, zone, body, request_id):
    if request_id:
        try:
            if uuid.UUID(request_id).int == 0:
                return api_error(400, "Invalid value for field 'requestId': '%s'. The zero UUID is not supported." % request_id, "invalid", "INVALID_ARGUMENT")
        except ValueError:
            return api_error(400, "Invalid value for field 'requestId': '%s'. Must be a UUID." % request_id, "invalid", "INVALID_ARGUMENT")
        if request_id in state.request_ids:
            return 200, op_view(state.operations[state.request_ids[request_id]])
    name = body.get("name")
    if not isinstance(name, str) or not re.match(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", name):
        return api_error(400, "Invalid value for field 'resource.name': '%s'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'" % name, "invalid", "INVALID_ARGUMENT")
    mt = str(body.get("machineType", ""))
    m = re.match(r"^(?:.*/)?zones/([^/]+)/machineTypes/([^/]+)$", mt)
    if not m or m.group(1) != zone or m.group(2) not in ZONE_TYPES.get(zone, ()):
        return api_error(400, "Invalid value for field 'resource.machineType': '%s'. Machine type with name '%s' does not exist in zone '%s'." % (mt, mt.split("/")[-1], zone), "invalid", "INVALID_ARGUMENT")
    labels = body.get("labels") or {}
    for k, v in labels.items():
        if not LABEL_RE.match(k) or not isinstance(v, str) or not VALUE_RE.match(v):
            return api_error(400, "Invalid value for field 'resource.labels': '%s'. Label keys must start with a lowercase letter and contain only lowercase letters, digits, '_' and '-' (values: the same, may start with any); at most 63 characters." % k, "invalid", "INVALID_ARGUMENT")
    if (zone, name) in state.instances:
        return api_error(409, "The resource 'projects/%s/zones/%s/instances/%s' already exists" % (state.project, zone, name), "alreadyExists", "ALREADY_EXISTS")
    state.last_insert = body
    state.count("inserts")
    f = state.faults
    scheduling = body.get("scheduling") or {}
    if zone in (f.get("no_capacity_zones") or []):
        op = new_operation(state, zone, "insert", name, {"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "The zone 'projects/%s/zones/%s' does not have enough resources available to fulfill the request.  Try a different zone, or try again later." % (state.project, zone)}, 503)
    elif f.get("quota_exceeded"):
        op = new_operation(state, zone, "insert", name, {"code": "QUOTA_EXCEEDED", "message": "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 1.0 globally."}, 403)
    else:
        op = new_operation(state, zone, "insert", name)
        iid = str(uuid.uuid4().int % 10**19)
        n = len(state.instances) + 2
        state.instances[(zone, name)] = {
            "kind": "compute#instance", "id": iid, "name": name, "zone": "%s/zones/%s" % (state.base, zone),
            "machineType": "%s/zones/%s/machineTypes/%s" % (state.base, zone, m.group(2)), "status": "PROVISIONING",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
            "labels": labels, "metadata": body.get("metadata") or {}, "scheduling": scheduling,
            "networkInterfaces": [{"network": "%s/global/networks/default" % state.base, "networkIP": "10.128.0.%d" % (n % 250),
                                   "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": "127.0.0.1", "networkTier": "PREMIUM"}]}],
            "selfLink": "%s/zones/%s/instances/%s" % (state.base, zone, name),
            "_bootAt": time.time() + float(f.get("boot_seconds", 0.3)),
        }
    if request_id:
        state.request_ids[request_id] = op["name"]
    return 200, op_view(op)


def page(state, q, items, key):
    """Aggregated `items` ({scope: {key: [...]}}) cut to page_size resources from pageToken."""
    size = int(state.faults.get("page_size") or 0)
    flat = [(scope, r) for scope in sorted(items) for r in items[scope][key]]
    start = int(q.get("pageToken") or 0)
    end = len(flat) if size <= 0 else start + size
    out = {}
    for scope, r in flat[start:end]:
        out.setdefault(scope, {key: []})[key].append(r)
    doc = {"items": out}
    if end < len(flat):
        doc["nextPageToken"] = str(end)
    state.count("pages")
    return doc


def name_filter(flt):
    """`name eq "REGEX"` → a compiled regex (None: no filter)."""
    m = re.match(r'^\s*name\s+eq\s+"?([^"]*)"?\s*$', flt or "")
    return re.compile(m.group(1)) if m else None


def purge(state):
    """Instances whose deletion (delete_seconds, a preemption with DELETE) has finished."""
    now = time.time()
    for k in [k for k, i in state.instances.items() if i.get("_deleteAt") and i["_deleteAt"] <= now]:
        del state.instances[k]


def label_filter(flt):
    """`labels.K = "V" AND labels.K2 = V2` → {K: V}."""
    return {m.group(1): m.group(2) for m in re.finditer(r'labels\.([a-z0-9_-]+)\s*=\s*"?([a-z0-9_-]*)"?', flt or "")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        s = self.state
        url = urlparse(self.path)
        path = unquote(url.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        raw = self.read_body()
        with s.lock:
            purge(s)
            if path.startswith("/_emulator/"):
                return self.admin(method, path, raw)
            if path == "/token" and method == "POST":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                    return self.send(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."})
                why = verify_jwt(s, form.get("assertion", ""))
                if why:
                    return self.send(400, {"error": "invalid_grant", "error_description": why})
                token = "ya29." + uuid.uuid4().hex + uuid.uuid4().hex
                ttl = float(s.faults.get("token_ttl", 3600))
                s.tokens[token] = time.time() + ttl
                s.count("tokens")
                return self.send(200, {"access_token": token, "expires_in": int(ttl) if ttl >= 1 else ttl, "token_type": "Bearer"})
            if not path.startswith("/compute/v1/projects/"):
                return self.send(*api_error(404, "Not Found", "notFound", "NOT_FOUND"))
            s.count("requests")
            f = s.faults
            if f.get("rate_limited", 0) > 0:
                f["rate_limited"] -= 1
                s.count("rate_limited")
                return self.send(*api_error(403, "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service 'compute.googleapis.com'.", "rateLimitExceeded", "PERMISSION_DENIED", "usageLimits"))
            if f.get("rate_limited_429", 0) > 0:
                f["rate_limited_429"] -= 1
                s.count("rate_limited")
                return self.send(*api_error(429, "Rate Limit Exceeded", "rateLimitExceeded", "RESOURCE_EXHAUSTED", "usageLimits"))
            if f.get("server_errors", 0) > 0:
                f["server_errors"] -= 1
                return self.send(*api_error(503, "The service is currently unavailable.", "backendError", "UNAVAILABLE"))
            auth = self.headers.get("Authorization") or ""
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if token not in s.tokens or s.tokens[token] < time.time():
                s.count("rejected_tokens")
                return self.send(*api_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "authError", "UNAUTHENTICATED"))
            parts = path[len("/compute/v1/projects/"):].split("/")
            if parts[0] != s.project:
                return self.send(*api_error(403, "Required 'compute.instances.list' permission for 'projects/%s'" % parts[0], "forbidden", "PERMISSION_DENIED"))
            rest = parts[1:]
            if rest == ["zones"] and method == "GET":
                return self.send(200, {"kind": "compute#zoneList", "items": [
                    {"kind": "compute#zone", "name": z, "region": "%s/regions/%s" % (s.base, r), "status": "UP"} for z, r in ZONES.items()]})
            if rest == ["aggregated", "machineTypes"] and method == "GET":
                items = {}
                want = name_filter(q.get("filter"))
                if q.get("filter") and want is None:
                    return self.send(*api_error(400, "Invalid list filter expression '%s'." % q.get("filter"), "invalid", "INVALID_ARGUMENT"))
                for z in ZONES:
                    items["zones/" + z] = {"machineTypes": [
                        dict({"kind": "compute#machineType", "name": n, "guestCpus": c, "memoryMb": mem, "zone": z},
                             **({"accelerators": [{"guestAcceleratorType": acc, "guestAcceleratorCount": cnt}]} if acc else {}))
                        for (n, c, mem, acc, cnt) in MACHINE_TYPES if n in ZONE_TYPES[z] and (want is None or want.fullmatch(n))]}
                s.counters["machine_types_listed"] = sum(len(v["machineTypes"]) for v in items.values())
                return self.send(200, dict(page(s, q, items, "machineTypes"), kind="compute#machineTypeAggregatedList"))
            if rest == ["aggregated", "instances"] and method == "GET":
                want = label_filter(q.get("filter"))
                items = {}
                for (z, n), inst in s.instances.items():
                    if all(inst["labels"].get(k) == v for k, v in want.items()):
                        items.setdefault("zones/" + z, {"instances": []})["instances"].append(instance_view(s, inst))
                return self.send(200, dict(page(s, q, items, "instances"), kind="compute#instanceAggregatedList"))
            if len(rest) >= 3 and rest[0] == "zones" and rest[1] in ZONES:
                zone = rest[1]
                tail = rest[2:]
                if tail == ["instances"] and method == "POST":
                    try:
                        body = json.loads(raw)
                    except Exception:
                        return self.send(*api_error(400, "Invalid JSON payload received.", "parseError", "INVALID_ARGUMENT"))
                    return self.send(*insert(s, zone, body, q.get("requestId")))
                if len(tail) == 2 and tail[0] == "instances":
                    inst = s.instances.get((zone, tail[1]))
                    if inst is None:
                        return self.send(*api_error(404, "The resource 'projects/%s/zones/%s/instances/%s' was not found" % (s.project, zone, tail[1]), "notFound", "NOT_FOUND"))
                    if method == "GET":
                        return self.send(200, instance_view(s, inst))
                    if method == "DELETE":
                        rid = q.get("requestId")
                        if rid and rid in s.request_ids:
                            return self.send(200, op_view(s.operations[s.request_ids[rid]]))
                        if inst.get("_deleting"):
                            return self.send(*api_error(400, "The resource 'projects/%s/zones/%s/instances/%s' is not ready" % (s.project, zone, tail[1]), "resourceNotReady", "FAILED_PRECONDITION"))
                        s.count("deletes")
                        op = new_operation(s, zone, "delete", tail[1])
                        if rid:
                            s.request_ids[rid] = op["name"]
                        inst["status"] = "STOPPING"
                        wait = float(s.faults.get("delete_seconds") or 0)
                        if wait > 0:
                            inst["_deleting"] = True
                            inst["_deleteAt"] = time.time() + wait
                        else:
                            del s.instances[(zone, tail[1])]
                        return self.send(200, op_view(op))
                if len(tail) == 2 and tail[0] == "operations" and method == "GET":
                    op = s.operations.get(tail[1])
                    if op is None:
                        return self.send(*api_error(404, "The resource 'projects/%s/zones/%s/operations/%s' was not found" % (s.project, zone, tail[1]), "notFound", "NOT_FOUND"))
                    return self.send(200, op_view(op))
            return self.send(*api_error(404, "The requested URL %s was not found on this server." % path, "notFound", "NOT_FOUND"))

    def admin(self, method, path, raw):
        s = self.state
        doc = json.loads(raw or b"{}") if method == "POST" else {}
        if path == "/_emulator/faults":
            if method == "POST":
                s.faults.update(doc)
            return self.send(200, s.faults)
        if path == "/_emulator/state":
            return self.send(200, {"counters": s.counters, "lastInsert": s.last_insert,
                                   "instances": [instance_view(s, i) for i in s.instances.values()]})
        if path == "/_emulator/reset":
            s.instances.clear()
            return self.send(200, {})
        if path == "/_emulator/preempt":
            for (z, n), inst in s.instances.items():
                if n == doc.get("name") and (inst["scheduling"] or {}).get("provisioningModel") == "SPOT":
                    inst["status"] = "TERMINATED"
                    new_operation(s, z, "compute.instances.preempted", n)
                    if (inst["scheduling"] or {}).get("instanceTerminationAction") == "DELETE":
                        inst["_deleteAt"] = time.time() + float(s.faults.get("preempt_delete_seconds", 1))
                    return self.send(200, {})
            return self.send(404, {"error": "no spot instance %s" % doc.get("name")})
        return self.send(404, {})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--project", required=True)
    p.add_argument("--client-email", required=True)
    p.add_argument("--jwt-modulus", required=True)
    p.add_argument("--jwt-exponent", type=int, default=65537)
    p.add_argument("--faults", default="{}")
    a = p.parse_args()
    Handler.state = State(a)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        os.rename(a.port_file + ".tmp", a.port_file)
    print("compute engine api on 127.0.0.1:%d" % server.server_address[1], file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
