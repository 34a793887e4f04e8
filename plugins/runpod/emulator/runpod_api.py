#!/usr/bin/env python3
"""A RunPod GraphQL API server for tests: the operations, argument names, field names, status
values and error shapes of RunPod's documented GraphQL API (docs/plugins/runpod.md lists the
sources), with switches for the faults a real cloud has. Standard library only; 127.0.0.1 only.

    python3 runpod_api.py --port 0 --port-file F --api-key KEY [--faults JSON]

API: POST /graphql {"query", "variables"}; auth `Authorization: Bearer KEY` or `?api_key=KEY`.
The operation is recognised by its root field, its arguments are read from `variables` (the
plugin passes every input as a variable), and the whole object is returned whatever the
selection set asks (a client ignores what it did not ask for):
    gpuTypes(input: $input) {… lowestPrice(input: $lowestPrice) {…}}   the catalog
    podFindAndDeployOnDemand(input: $input) {…}                         an on-demand pod
    podRentInterruptable(input: $input) {…}    a spot pod ("bidPerGpu" at least minimumBidPrice)
    pod(input: {podId}) {…};  myself { pods {…} }
    podTerminate(input: {podId})     "pod not found to terminate" for an unknown id
Errors: HTTP 200 with {"data": null, "errors": [{"message", "path", "extensions": {"code"}}]}, as
RunPod's GraphQL answers; HTTP 401 for a missing or wrong key; 429 with Retry-After when
throttled. Pod `desiredStatus`: RUNNING (runtime null while the container starts), EXITED (an
interruptible pod stopped by RunPod, or a pod that exited), TERMINATED (then forgotten: a
terminated pod is no longer listed, as on RunPod). `env` is the pod's environment as
["KEY=VALUE", …] (unconfirmed in RunPod's docs: see docs/plugins/runpod.md).

Switches (POST /_emulator/faults with a JSON object, merged; GET shows them; no auth):
    no_capacity          bool   every launch fails "There are no longer any instances available…"
    capacity_failures    int    the next N launches fail that way
    capacity_after       int    N more launches succeed, then every one fails that way (a
                                gang that starts only in part); null turns it off
    stock                {gpuTypeId: High|Medium|Low|None}  stockStatus per type (default High)
    rate_limited         int    the next N requests answer HTTP 429 (Retry-After: retry_after)
    retry_after          float  seconds (default 0.2)
    server_errors        int    the next N requests answer HTTP 502 with an HTML page
    boot_seconds         float  RUNNING with runtime null until then (default 0.2)
    balance_exhausted    bool   every launch fails "Insufficient balance" (a quota)
GET /_emulator/state: counters (requests, rate_limited, launched, terminated, per operation) and
every pod; POST /_emulator/preempt {"podId"} stops an interruptible pod as RunPod does (EXITED);
POST /_emulator/reset.
"""
import argparse
import os
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# The catalog: RunPod's gpuTypes ids and per-GPU prices ($/h; dated 2026-11-27, as listed on
# runpod.io/pricing: securePrice on demand, minimumBidPrice the spot floor).
GPU_TYPES = [
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80, "maxGpuCount": 8,
     "securePrice": 2.69, "communityPrice": 2.29, "minimumBidPrice": 1.75},
    {"id": "NVIDIA H100 PCIe", "displayName": "H100 PCIe", "memoryInGb": 80, "maxGpuCount": 8,
     "securePrice": 2.39, "communityPrice": 1.99, "minimumBidPrice": 1.45},
    {"id": "NVIDIA A100-SXM4-80GB", "displayName": "A100 SXM", "memoryInGb": 80, "maxGpuCount": 8,
     "securePrice": 1.49, "communityPrice": 1.19, "minimumBidPrice": 0.95},
    {"id": "NVIDIA L4", "displayName": "L4", "memoryInGb": 24, "maxGpuCount": 8,
     "securePrice": 0.43, "communityPrice": 0.39, "minimumBidPrice": 0.25},
]
NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")


class State:
    def __init__(self, api_key, faults):
        self.lock = threading.Lock()
        self.api_key = api_key
        self.faults = {"retry_after": 0.2, "boot_seconds": 0.2}
        self.faults.update(faults or {})
        self.pods = {}
        self.counters = {"requests": 0, "rate_limited": 0, "server_errors": 0, "launched": 0, "terminated": 0}

    def count(self, key):
        self.counters[key] = self.counters.get(key, 0) + 1


class GraphQLError(Exception):
    def __init__(self, message, code="BAD_USER_INPUT"):
        super().__init__(message)
        self.message = message
        self.code = code


def gpu_type(gid):
    return next((g for g in GPU_TYPES if g["id"] == gid), None)


def pod_view(pod, now):
    """The pod as RunPod's Pod type answers it (the fields the docs list)."""
    out = {k: pod[k] for k in ("id", "name", "desiredStatus", "imageName", "costPerHr", "gpuCount",
                               "machineId", "podType", "env", "lastStatusChange", "containerDiskInGb")}
    out["machine"] = {"podHostId": pod["id"] + "-" + pod["machineId"][:8], "gpuDisplayName": pod["gpuDisplayName"]}
    booted = now >= pod["bootAt"]
    if pod["desiredStatus"] == "RUNNING" and booted:
        out["runtime"] = {
            "uptimeInSeconds": int(now - pod["bootAt"]),
            "ports": [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22, "publicPort": pod["sshPort"], "type": "tcp"},
                      {"ip": "10.65.0.%d" % pod["octet"], "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"}],
            "gpus": [{"id": "GPU-%s-%d" % (pod["id"], k), "gpuUtilPercent": 0} for k in range(pod["gpuCount"])],
        }
    else:
        out["runtime"] = None
    return out


def deploy(state, inp, interruptible):
    f = state.faults
    gid = inp.get("gpuTypeId")
    g = gpu_type(gid)
    if g is None:
        raise GraphQLError("Invalid GPU type id: %s" % gid)
    count = inp.get("gpuCount", 1)
    if not isinstance(count, int) or count < 1 or count > g["maxGpuCount"]:
        raise GraphQLError("gpuCount must be between 1 and %d" % g["maxGpuCount"])
    if not inp.get("imageName"):
        raise GraphQLError("imageName is required")
    if f.get("balance_exhausted"):
        raise GraphQLError("Insufficient balance to deploy this pod. Please add funds to your account.", "FORBIDDEN")
    stock = (f.get("stock") or {}).get(gid, "High")
    if f.get("no_capacity") or stock == "None":
        raise GraphQLError(NO_CAPACITY)
    if f.get("capacity_failures", 0) > 0:
        f["capacity_failures"] -= 1
        raise GraphQLError(NO_CAPACITY)
    if f.get("capacity_after") is not None:
        if f["capacity_after"] <= 0:
            raise GraphQLError(NO_CAPACITY)
        f["capacity_after"] -= 1
    cloud = inp.get("cloudType", "ALL")
    per_gpu = g["communityPrice"] if cloud == "COMMUNITY" else g["securePrice"]
    if interruptible:
        bid = inp.get("bidPerGpu")
        if not isinstance(bid, (int, float)) or bid < g["minimumBidPrice"]:
            raise GraphQLError("bidPerGpu must be at least the minimum bid price of %.2f" % g["minimumBidPrice"])
        per_gpu = bid
    env = inp.get("env") or []
    if not all(isinstance(e, dict) and "key" in e and "value" in e for e in env):
        raise GraphQLError("env must be a list of {key, value}")
    now = time.time()
    pid = uuid.uuid4().hex[:14]
    pod = {
        "id": pid, "name": inp.get("name") or "", "desiredStatus": "RUNNING", "imageName": inp["imageName"],
        "costPerHr": round(per_gpu * count, 4), "gpuCount": count, "machineId": uuid.uuid4().hex,
        "podType": "INTERRUPTABLE" if interruptible else "RESERVED",
        "env": ["%s=%s" % (e["key"], e["value"]) for e in env], "lastStatusChange": "Rented by User: %s" % time.ctime(now),
        "containerDiskInGb": inp.get("containerDiskInGb"), "gpuDisplayName": g["displayName"],
        "bootAt": now + float(f.get("boot_seconds", 0.2)), "sshPort": 20000 + len(state.pods) % 40000,
        "octet": 2 + len(state.pods) % 250, "ports": inp.get("ports"), "createdAt": now,
    }
    state.pods[pid] = pod
    state.count("launched")
    return pod


def handle_graphql(state, query, variables):
    """Runs one operation; returns `data`."""
    v = variables or {}
    now = time.time()
    if re.search(r"\bpodFindAndDeployOnDemand\b", query):
        return {"podFindAndDeployOnDemand": pod_view(deploy(state, v.get("input") or {}, False), now)}
    if re.search(r"\bpodRentInterruptable\b", query):
        return {"podRentInterruptable": pod_view(deploy(state, v.get("input") or {}, True), now)}
    if re.search(r"\bpodTerminate\b", query):
        pid = (v.get("input") or {}).get("podId")
        pod = state.pods.get(pid)
        if pod is None or pod["desiredStatus"] == "TERMINATED":
            raise GraphQLError("pod not found to terminate")
        pod["desiredStatus"] = "TERMINATED"
        state.count("terminated")
        del state.pods[pid]  # RunPod forgets a terminated pod
        return {"podTerminate": None}
    if re.search(r"\bgpuTypes\b", query):
        lp = v.get("lowestPrice") or {}
        count = lp.get("gpuCount", 1)
        out = []
        for g in GPU_TYPES:
            stock = (state.faults.get("stock") or {}).get(g["id"], "High")
            secure = lp.get("secureCloud", True)
            out.append({
                "id": g["id"], "displayName": g["displayName"], "manufacturer": "Nvidia", "memoryInGb": g["memoryInGb"],
                "secureCloud": True, "communityCloud": True, "securePrice": g["securePrice"],
                "communityPrice": g["communityPrice"], "maxGpuCount": g["maxGpuCount"],
                "lowestPrice": None if stock == "None" else {
                    "minimumBidPrice": g["minimumBidPrice"],
                    "uninterruptablePrice": g["securePrice"] if secure else g["communityPrice"],
                    "stockStatus": stock, "availableGpuCounts": [c for c in (1, 2, 4, 8) if c <= g["maxGpuCount"]],
                    "minVcpu": 8 * count, "minMemory": 60 * count,
                },
            })
        return {"gpuTypes": out}
    if re.search(r"\bmyself\b", query):
        return {"myself": {"id": "user-1", "pods": [pod_view(p, now) for p in state.pods.values()]}}
    if re.search(r"\bpod\b", query):
        pid = (v.get("input") or {}).get("podId")
        pod = state.pods.get(pid)
        return {"pod": pod_view(pod, now) if pod else None}
    raise GraphQLError("Cannot query this operation on this server", "GRAPHQL_VALIDATION_FAILED")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=None, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, val in (headers or {}).items():
            self.send_header(k, val)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        s = self.state
        path = urlparse(self.path).path
        with s.lock:
            if path == "/_emulator/state":
                return self.send(200, {"counters": s.counters, "pods": list(s.pods.values()), "faults": s.faults})
            if path == "/_emulator/faults":
                return self.send(200, s.faults)
        self.send(404, {"errors": [{"message": "Not found"}]})

    def do_POST(self):
        s = self.state
        url = urlparse(self.path)
        raw = self.body()
        if url.path.startswith("/_emulator/"):
            doc = json.loads(raw or b"{}")
            with s.lock:
                if url.path == "/_emulator/faults":
                    s.faults.update(doc)
                    return self.send(200, s.faults)
                if url.path == "/_emulator/reset":
                    s.pods.clear()
                    return self.send(200, {})
                if url.path == "/_emulator/preempt":
                    pod = s.pods.get(doc.get("podId"))
                    if pod is None or pod["podType"] != "INTERRUPTABLE":
                        return self.send(404, {"error": "no interruptible pod %s" % doc.get("podId")})
                    pod["desiredStatus"] = "EXITED"
                    pod["lastStatusChange"] = "Exited by RunPod: interruptible pod was outbid"
                    return self.send(200, {})
            return self.send(404, {})
        if url.path != "/graphql":
            return self.send(404, {"errors": [{"message": "Not found"}]})
        with s.lock:
            s.count("requests")
            f = s.faults
            if f.get("rate_limited", 0) > 0:
                f["rate_limited"] -= 1
                s.count("rate_limited")
                return self.send(429, {"errors": [{"message": "Too many requests"}]},
                                 {"Retry-After": str(f.get("retry_after", 0.2)), "RateLimit-Policy": '"minute";q=60;w=60'})
            if f.get("server_errors", 0) > 0:
                f["server_errors"] -= 1
                s.count("server_errors")
                return self.send(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
            auth = self.headers.get("Authorization") or ""
            key = auth[7:] if auth.startswith("Bearer ") else (parse_qs(url.query).get("api_key") or [""])[0]
            if key != s.api_key:
                return self.send(401, {"errors": [{"message": "Unauthorized: the API key is missing or invalid",
                                                   "extensions": {"code": "UNAUTHENTICATED"}}]})
            try:
                doc = json.loads(raw)
                query = doc["query"]
                assert isinstance(query, str)
            except Exception:
                return self.send(400, {"errors": [{"message": "Must provide query string.", "extensions": {"code": "BAD_REQUEST"}}]})
            op = next((w for w in ("podFindAndDeployOnDemand", "podRentInterruptable", "podTerminate", "gpuTypes", "myself", "pod")
                       if re.search(r"\b%s\b" % w, query)), "other")
            s.count("op:" + op)
            try:
                data = handle_graphql(s, query, doc.get("variables"))
                return self.send(200, {"data": data})
            except GraphQLError as e:
                return self.send(200, {"data": None, "errors": [{"message": e.message, "path": [op], "extensions": {"code": e.code}}]})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--api-key", required=True)
    p.add_argument("--faults", default="{}")
    a = p.parse_args()
    Handler.state = State(a.api_key, json.loads(a.faults))
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))

        os.rename(a.port_file + ".tmp", a.port_file)
    print("runpod api on 127.0.0.1:%d" % server.server_address[1], file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
