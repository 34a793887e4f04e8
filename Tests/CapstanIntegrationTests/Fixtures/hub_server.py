#!/usr/bin/env python3
"""A Hugging Face Hub stand-in for the recipe-source tests, on 127.0.0.1 only, following the
Hub's documented download API (huggingface_hub's file_download / HfApi.model_info):

    GET /api/models/{repo_id}/revision/{revision}[?blobs=true]
        -> {"id", "sha", "siblings": [{"rfilename", "size", "lfs": {"sha256", "size"}}]}
    GET /{repo_id}/resolve/{revision}/{filename}
        -> the bytes, with X-Repo-Commit and ETag (the LFS SHA-256 for weights)

    hub_server.py PORT ROOT LOG TOKEN_ENV

ROOT/{org}/{name}/ is a repository (its files; revision `main` and the commit id, a hash of
the files, resolve to it). Every request needs `Authorization: Bearer <token>` where the token
comes from the environment variable named TOKEN_ENV (never argv): 401 without, 403 with
another. Appends a JSON line per request to LOG (method, path, status, authorized; never the
header itself). Prints "listening" once it listens.
"""
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

port, root, log, token_env = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
token = os.environ[token_env]


def repo_files(repo_dir):
    out = []
    for base, _, names in os.walk(repo_dir):
        for n in names:
            full = os.path.join(base, n)
            out.append(os.path.relpath(full, repo_dir))
    return sorted(out)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def commit(repo_dir):
    h = hashlib.sha1()
    for f in repo_files(repo_dir):
        h.update(f.encode() + b"\0" + sha256(os.path.join(repo_dir, f)).encode())
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def record(self, status, authorized):
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "status": status, "authorized": authorized}) + "\n")

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, message, authorized):
        self.record(status, authorized)
        self.send(status, json.dumps({"error": message}).encode(), [("Content-Type", "application/json"), ("X-Error-Message", message)])

    def do_GET(self):
        auth = self.headers.get("Authorization")
        if auth is None:
            return self.error(401, "Invalid username or password.", False)
        if auth != f"Bearer {token}":
            return self.error(403, "Access to this repository is restricted.", False)
        path = unquote(urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if len(parts) >= 6 and parts[0] == "api" and parts[1] == "models" and parts[4] == "revision":
            repo, rev = "/".join(parts[2:4]), "/".join(parts[5:])
            repo_dir = os.path.join(root, repo)
            if not os.path.isdir(repo_dir):
                return self.error(404, "Repository not found", True)
            sha = commit(repo_dir)
            if rev not in ("main", sha):
                return self.error(404, f"Invalid rev id: {rev}", True)
            siblings = []
            for f in repo_files(repo_dir):
                full = os.path.join(repo_dir, f)
                s = {"rfilename": f, "size": os.path.getsize(full)}
                if f.endswith(".safetensors"):
                    s["lfs"] = {"sha256": sha256(full), "size": os.path.getsize(full), "pointerSize": 134}
                siblings.append(s)
            self.record(200, True)
            body = json.dumps({"_id": sha[:24], "id": repo, "modelId": repo, "sha": sha, "private": True, "siblings": siblings}).encode()
            return self.send(200, body, [("Content-Type", "application/json")])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo_dir = os.path.join(root, repo)
            if not os.path.isdir(repo_dir):
                return self.error(404, "Repository not found", True)
            sha = commit(repo_dir)
            full = os.path.normpath(os.path.join(repo_dir, name))
            if rev not in ("main", sha) or not full.startswith(repo_dir + os.sep) or not os.path.isfile(full):
                return self.error(404, "Entry not found", True)
            with open(full, "rb") as f:
                body = f.read()
            self.record(200, True)
            return self.send(200, body, [("Content-Type", "application/octet-stream"), ("X-Repo-Commit", sha),
                                         ("ETag", f'"{sha256(full)}"')])
        return self.error(404, "Not found", True)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
