"""A small Hugging Face Hub on 127.0.0.1 for the downloader's tests and benchmark.

It answers the calls the real huggingface-hub client makes, the way the Hub answers them:

- ``GET /api/models/{repo}[/revision/{rev}]?blobs=true``: model info with every file's size,
  git blob id and LFS sha256; unknown repos get 401 with ``X-Error-Code: RepoNotFound``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: for an LFS file, a 302 to the CDN carrying
  ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; 404
  ``EntryNotFound`` for a missing file; 401/403 ``GatedRepo`` for a gated repo without an
  accepted token.
- ``HEAD|GET /blobs/{sha256}`` on a second port (another origin, as the real CDN is): the
  bytes, with ``Range`` (206), ``ETag`` and ``Accept-Ranges``.

It can be told to misbehave (``fail_next``: drop the connection, stall, answer 5xx;
``corrupt``; ``rate``) and counts what it served, so a test can prove what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


@dataclass
class Blob:
    path: Path
    size: int
    sha256: str


@dataclass
class Repo:
    commit: str
    files: dict[str, Blob]
    gated: bool = False
    readme: bytes = b"# model card\n"


@dataclass
class Fault:
    """One misbehaviour, used by the next CDN GET: ``drop`` or ``stall`` after ``after`` bytes
    of the body (a stall sleeps ``seconds`` and then drops), or an HTTP ``status``."""

    kind: str
    after: int = 0
    seconds: float = 0.0
    status: int = 500


@dataclass
class Counters:
    bytes_served: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range

    def gets(self, prefix: str) -> list[tuple[str, str]]:
        """(path, Range header) of every GET whose path starts with ``prefix``."""
        return [
            (p, r) for method, p, r in self.requests if method == "GET" and p.startswith(prefix)
        ]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


class FakeHub:
    """Repos and their files; faults to inject; counters. Start it with :func:`running_hub`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens: set[str] = set()  # tokens whose owner accepted every gated licence
        self.fail_next: list[Fault] = []
        self.corrupt: set[str] = set()  # sha256 of blobs served with one byte flipped
        self.rate: float | None = None  # bytes per second per download, None = as fast as possible
        self.counters = Counters()
        self.lock = threading.Lock()
        self.closing = threading.Event()  # ends stalls when the server stops
        self.endpoint = ""
        self.cdn = ""

    def add_repo(self, repo_id: str, files: dict[str, Path], gated: bool = False) -> Repo:
        blobs = {name: Blob(p, p.stat().st_size, sha256_of(p)) for name, p in files.items()}
        commit = hashlib.sha1(repo_id.encode() + str(sorted(blobs)).encode()).hexdigest()
        self.repos[repo_id] = Repo(commit, blobs, gated)
        return self.repos[repo_id]

    def blob(self, sha: str) -> Blob | None:
        for repo in self.repos.values():
            for blob in repo.files.values():
                if blob.sha256 == sha:
                    return blob
        return None

    def take_fault(self) -> Fault | None:
        with self.lock:
            return self.fail_next.pop(0) if self.fail_next else None


def _handler(hub: FakeHub, cdn: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            with hub.lock:
                hub.counters.requests.append(
                    (self.command, self.path, self.headers.get("Range", ""))
                )
            path = self.path.split("?", 1)[0]
            try:
                if cdn:
                    self._blob(path.removeprefix("/blobs/"), head)
                elif path.startswith("/api/models/"):
                    self._model_info(path.removeprefix("/api/models/"))
                elif "/resolve/" in path:
                    self._resolve(path, head)
                else:
                    self._error(404, "", "Not found")
            except (BrokenPipeError, ConnectionResetError):
                pass

        # -- Hub API -------------------------------------------------------------------

        def _model_info(self, rest: str) -> None:
            repo_id, _, revision = rest.partition("/revision/")
            repo = self._repo(repo_id)
            if repo is None:
                return
            if revision and revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            siblings: list[dict[str, Any]] = [
                {"rfilename": "README.md", "size": len(repo.readme), "blobId": "0" * 40}
            ]
            for name, blob in repo.files.items():
                siblings.append(
                    {
                        "rfilename": name,
                        "size": blob.size,
                        "blobId": hashlib.sha1(blob.sha256.encode()).hexdigest(),
                        "lfs": {"sha256": blob.sha256, "size": blob.size, "pointerSize": 134},
                    }
                )
            body = json.dumps(
                {
                    "_id": "0" * 24,
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": ["gguf"],
                    "siblings": siblings,
                }
            ).encode()
            self._reply(200, {"Content-Type": "application/json"}, body)

        def _resolve(self, path: str, head: bool) -> None:
            match = re.fullmatch(
                r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path
            )
            if match is None:
                self._error(404, "", "Not found")
                return
            repo = self._repo(match["repo"])
            if repo is None:
                return
            if match["rev"] not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
                return
            if repo.gated:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not token:
                    self._error(401, "GatedRepo", f"Access to model {match['repo']} is restricted.")
                    return
                if token not in hub.tokens:
                    self._error(
                        403, "GatedRepo", f"Access to model {match['repo']} is restricted and "
                        "you are not in the authorized list."
                    )  # fmt: skip
                    return
            headers = {"X-Repo-Commit": repo.commit}
            if match["file"] == "README.md":
                headers["ETag"] = '"' + "0" * 40 + '"'
                self._reply(200, headers, b"" if head else repo.readme, length=len(repo.readme))
                return
            blob = repo.files.get(match["file"])
            if blob is None:
                headers["X-Error-Code"] = "EntryNotFound"
                self._error(404, "EntryNotFound", "Entry not found", headers)
                return
            headers.update(
                {
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                    "ETag": f'"{hashlib.sha1(blob.sha256.encode()).hexdigest()}"',
                    "Location": f"{hub.cdn}/blobs/{blob.sha256}?X-Amz-Expires=3600",
                }
            )
            self._reply(302, headers, b"")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
            return repo

        # -- CDN -----------------------------------------------------------------------

        def _blob(self, sha: str, head: bool) -> None:
            blob = hub.blob(sha)
            if blob is None:
                self._reply(404, {}, b"NoSuchKey")
                return
            start = 0
            status = 200
            headers = {"ETag": f'"{blob.sha256}"', "Accept-Ranges": "bytes"}
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match:
                start = int(match[1])
                if start >= blob.size:
                    headers["Content-Range"] = f"bytes */{blob.size}"
                    self._reply(416, headers, b"")
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{blob.size - 1}/{blob.size}"
            if head:
                self._reply(status, headers, b"", length=blob.size - start)
                return
            fault = hub.take_fault()
            if fault is not None and fault.kind == "status":
                self._reply(fault.status, {}, b"Internal error")
                return
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(blob.size - start))
            self.end_headers()
            self._send_body(blob, start, fault)

        def _send_body(self, blob: Blob, start: int, fault: Fault | None) -> None:
            limit = fault.after if fault is not None else None
            sent = 0
            began = time.monotonic()
            with open(blob.path, "rb") as f:
                f.seek(start)
                offset = start
                while block := f.read(BLOCK if hub.rate is None else min(BLOCK, 65536)):
                    if limit is not None and sent + len(block) > limit:
                        block = block[: limit - sent]
                    if blob.sha256 in hub.corrupt and offset <= blob.size // 2 < offset + len(
                        block
                    ):
                        i = blob.size // 2 - offset
                        block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1 :]
                    self.wfile.write(block)
                    sent += len(block)
                    offset += len(block)
                    with hub.lock:
                        hub.counters.bytes_served += len(block)
                    if limit is not None and sent >= limit:
                        break
                    if hub.rate is not None:
                        ahead = sent / hub.rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
            if fault is not None:
                self.wfile.flush()
                if fault.kind == "stall":
                    hub.closing.wait(fault.seconds)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        # -- replies -------------------------------------------------------------------

        def _error(
            self, status: int, code: str, message: str, headers: dict[str, str] | None = None
        ) -> None:
            headers = dict(headers or {})
            if code:
                headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
            headers["Content-Type"] = "application/json"
            self._reply(status, headers, json.dumps({"error": message}).encode())

        def _reply(
            self, status: int, headers: dict[str, str], body: bytes, length: int | None = None
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

    return Handler


@contextmanager
def running_hub(hub: FakeHub | None = None) -> Iterator[FakeHub]:
    """Serve ``hub`` (the API on one port, its CDN on another) until the block ends."""
    hub = hub or FakeHub()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, cdn)) for cdn in (False, True)]
    for server in servers:
        server.daemon_threads = True
        server.block_on_close = False
    hub.endpoint = f"http://127.0.0.1:{servers[0].server_address[1]}"
    hub.cdn = f"http://127.0.0.1:{servers[1].server_address[1]}"
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield hub
    finally:
        hub.closing.set()
        for server in servers:
            server.shutdown()
            server.server_close()


def main() -> None:
    """Serve files from another process (so a benchmark's client has the GIL to itself):
    ``python -m tests.helpers.fake_hub RATE REPO NAME=PATH…`` (RATE in bytes/s, 0 for no
    limit); prints the endpoint, then serves
    until its standard input closes."""
    import sys

    rate, repo, *files = sys.argv[1:]
    with running_hub() as hub:
        hub.rate = float(rate) or None
        hub.add_repo(repo, {name: Path(path) for name, path in (f.split("=", 1) for f in files)})
        print(hub.endpoint, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
