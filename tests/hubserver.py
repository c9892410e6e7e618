"""A fake Hugging Face Hub on 127.0.0.1 for the download tests.

It answers the endpoints huggingface_hub 2.4.0 calls for ``snapshot_download`` the way the Hub does:

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the file listing (``oid``, ``size``, ``lfs``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (or
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files) and ``Range`` requests (206 + ``Content-Range``).

Errors carry the ``X-Error-Code``/``X-Error-Message`` headers huggingface_hub maps to exceptions:
404 ``RepoNotFound``/``RevisionNotFound``/``EntryNotFound``, 401 ``GatedRepo`` for a gated repo
without a token, and 401 "Invalid credentials in Authorization header" for an unknown token.
``cut(path, after)`` makes the next GET of a file stop after ``after`` bytes (a dropped connection);
``fail(path, status)`` makes the next GET of a file answer an HTTP error; ``stall()`` makes the
server accept every connection and never answer (a hung server or proxy), until it stops;
``before`` (a function of the request) runs as each request arrives.
The upload endpoints (create, preupload, LFS, commit) are in tests/hubupload.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hubupload import UploadEndpoints, oid_of

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Revision:
    files: dict[str, bytes]
    sha: str


@dataclass
class FakeRepo:
    repo_id: str
    revisions: dict[str, Revision] = field(default_factory=dict)  # ref name -> revision
    gated: bool = False
    private: bool = False

    def find(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        for revision in self.revisions.values():
            if revision.sha == rev:
                return revision
        return None


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorized: bool


class FakeHub:
    """``with FakeHub() as hub: hub.add_repo(...); ... hub.url``"""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: set[str] = set()
        self.requests: list[Request] = []
        self._cuts: dict[str, int] = {}
        self._cut_then_fail: dict[str, int] = {}
        self._fails: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.blobs: dict[str, bytes] = {}  # the large file store: sha256 -> content
        self.stored: list[str] = []  # the oids PUT into the store, in order
        self.commits: list[str] = []  # commit summaries, in order
        self._upload_fails: dict[str, int] = {}
        self.stalled = False
        self.before: Callable[[Request], None] | None = None  # runs as each request arrives
        self._released = threading.Event()  # set when the server stops: stalled handlers end

    # -- set-up -------------------------------------------------------------------------------
    def add_repo(
        self, repo_id: str, revisions: dict[str, dict[str, bytes]], *, gated: bool = False
    ) -> FakeRepo:
        """``revisions``: ref name (e.g. "main", "v1") -> {path: content}."""
        repo = FakeRepo(repo_id, gated=gated)
        for ref, files in revisions.items():
            digest = hashlib.sha1(repr((repo_id, ref, sorted(files.items()))).encode()).hexdigest()
            repo.revisions[ref] = Revision(files=dict(files), sha=digest)
        self.repos[repo_id] = repo
        return repo

    def cut(self, path: str, after: int, then_fail: int | None = None) -> None:
        """The next GET of ``path`` (any repo) sends ``after`` bytes, then drops the connection;
        with ``then_fail``, the GET after that (the client's retry) answers that status."""
        with self._lock:
            self._cuts[path] = after
            if then_fail is not None:
                self._cut_then_fail[path] = then_fail

    def fail(self, path: str, status: int = 500) -> None:
        """The next GET of ``path`` (any repo) answers ``status``."""
        with self._lock:
            self._fails[path] = status

    def stall(self) -> None:
        """From now on, accept connections and never answer them."""
        self.stalled = True

    def new_revision(self, repo: FakeRepo, base: str, changes: dict[str, bytes]) -> Revision:
        """``base``'s files with ``changes`` applied, under a new commit sha."""
        parent = repo.find(base)
        files = {**(parent.files if parent else {}), **changes}
        digest = hashlib.sha1(
            repr((repo.repo_id, parent and parent.sha, sorted(files.items()))).encode()
        )
        return Revision(files=files, sha=digest.hexdigest())

    def fail_upload(self, data: bytes, status: int = 403) -> None:
        """The next PUT of the blob holding ``data`` into the store answers ``status``."""
        with self._lock:
            self._upload_fails[oid_of("x.gguf", data)] = status

    def take_upload_fail(self, oid: str) -> int | None:
        with self._lock:
            return self._upload_fails.pop(oid, None)

    def record(self, method: str, path: str, token: str | None) -> None:
        self.requests.append(Request(method, path, None, token is not None))

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        revision = self.repos[repo_id].find(rev)
        assert revision is not None
        return revision.files

    def gets(self, path: str) -> list[Request]:
        """The GET requests made for a repo file whose path ends with ``/path``."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]

    # -- server -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and hang up kept-alive connections, so the Hub is really gone."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def take_cut(self, path: str) -> int | None:
        with self._lock:
            return self._cuts.pop(path, None)

    def take_fail(self, path: str) -> int | None:
        with self._lock:
            return self._fails.pop(path, None)


class _Handler(UploadEndpoints, BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def handle(self) -> None:
        if self.fake.stalled:  # read nothing, answer nothing, until the server stops
            self.fake._released.wait()
            return
        super().handle()

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, **extra: str) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json", **extra}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        token = self._token()
        request = Request(self.command, split.path, self.headers.get("Range"), token is not None)
        self.fake.requests.append(request)
        if self.fake.before is not None:
            self.fake.before(request)
        if split.path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry
            self._json({})
            return
        if token is not None and token not in self.fake.tokens:
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        if len(parts) >= 3 and parts[:2] == ["api", "models"]:
            self._api(parts[2:], parse_qs(split.query))
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), token)
        else:
            self._error(404, None, "Not found")

    def _repo_and_revision(self, repo_id: str, rev: str) -> tuple[FakeRepo, Revision] | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        revision = repo.find(rev)
        if revision is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, revision

    # -- /api/models/... ----------------------------------------------------------------------
    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if len(parts) < 2:
            self._error(404, None, "Not found")
            return
        repo_id, rest = f"{parts[0]}/{parts[1]}", parts[2:]
        if not rest or rest[0] == "revision":
            found = self._repo_and_revision(repo_id, rest[1] if len(rest) > 1 else "main")
            if found:
                repo, revision = found
                self._json(
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": revision.sha,
                        "private": False,
                        "gated": "auto" if repo.gated else False,
                        "siblings": [{"rfilename": name} for name in sorted(revision.files)],
                        "cardData": _card_data(revision.files.get("README.md")),
                    }
                )
        elif rest[0] == "tree" and len(rest) >= 2:
            found = self._repo_and_revision(repo_id, rest[1])
            if found:
                prefix = "/".join(rest[2:])
                recursive = query.get("recursive", ["False"])[0].lower() == "true"
                self._json(_tree(found[1].files, prefix, recursive))
        else:
            self._error(404, None, "Not found")

    # -- /{repo}/resolve/{rev}/{path} ---------------------------------------------------------
    def _resolve(self, repo_id: str, rev: str, path: str, token: str | None) -> None:
        found = self._repo_and_revision(repo_id, rev)
        if not found:
            return
        repo, revision = found
        if repo.gated and token is None:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
            return
        data = revision.files.get(path)
        if data is None:
            self._error(
                404, "EntryNotFound", f"{path} does not exist", **{"X-Repo-Commit": revision.sha}
            )
            return
        status = self.fake.take_fail(path) if self.command == "GET" else None
        if status is not None:
            code = {404: "EntryNotFound"}.get(status)  # as the Hub marks a file it lacks
            self._error(status, code, "Internal Error")
            return
        headers = {"X-Repo-Commit": revision.sha, "Accept-Ranges": "bytes"}
        if path.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"'})
            headers["X-Linked-Size"] = str(len(data))
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data):
                self._error(416, None, "Range not satisfiable")
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        cut = self.fake.take_cut(path) if self.command == "GET" else None
        if cut is None:
            self._send(status, data, headers)
            return
        # Promise the whole body, send part of it, and hang up: the client sees a dropped transfer.
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with self.fake._lock:
            then_fail = self.fake._cut_then_fail.pop(path, None)
        if then_fail is not None:
            self.fake.fail(path, then_fail)
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True


def _card_data(readme: bytes | None) -> dict[str, Any] | None:
    """The YAML front matter of a README.md, as the Hub serves it in ``cardData``."""
    import yaml

    text = (readme or b"").decode("utf-8")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    loaded = yaml.safe_load(text[4 : text.index("\n---", 4)])
    return loaded if isinstance(loaded, dict) else None


def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    folders: set[str] = set()
    base = prefix + "/" if prefix else ""
    for name in sorted(files):
        if not name.startswith(base):
            continue
        relative = name[len(base) :]
        if "/" in relative and not recursive:
            folders.add(base + relative.split("/", 1)[0])
            continue
        for depth in range(1, relative.count("/") + 1):
            folders.add(base + "/".join(relative.split("/")[:depth]))
        data = files[name]
        entry: dict[str, Any] = {
            "type": "file",
            "oid": git_blob_sha1(data),
            "size": len(data),
            "path": name,
        }
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        entries.append(entry)
    entries += [
        {"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)
    ]
    return entries


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Iterator[FakeHub]:
    """A running FakeHub that huggingface_hub talks to, with its cache and login under ``hf_home``."""
    from huggingface_hub import constants

    with FakeHub() as server:
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(hf_home))
        # huggingface_hub read these when it was imported: point them at the fake Hub and hf_home.
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
        yield server
