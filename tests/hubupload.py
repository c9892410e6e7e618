"""The upload endpoints of the fake Hub (tests/hubserver.py), as huggingface_hub 2.4.0 calls them
with Xet off (``HF_HUB_DISABLE_XET=1``):

- ``POST /api/repos/create`` (409 when it exists), ``POST /api/models/{repo}/branch/{branch}``;
- ``POST /api/validate-yaml`` (the card's metadata);
- ``POST /api/models/{repo}/preupload/{rev}``: ``uploadMode`` (lfs for weights, regular else),
  and the ``oid`` the revision holds for each path (sha256 for LFS files, git sha1 else);
- ``POST /{repo}.git/info/lfs/objects/batch``: ``basic`` transfer, no ``actions`` for a blob the
  store already has; ``PUT /lfs-store/{oid}`` (the body must hash to the oid), ``POST
  /lfs-verify``;
- ``POST /api/models/{repo}/commit/{rev}`` (ndjson: ``header``, ``file``, ``lfsFile``).

``fail_upload(name, status)`` makes the next PUT of a blob answer ``status`` (a transfer cut off).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def oid_of(path: str, data: bytes) -> str:
    if is_lfs(path):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class UploadEndpoints:
    """Mixed into the fake Hub's request handler (``self.fake`` is the FakeHub)."""

    fake: Any
    headers: Any
    rfile: Any
    path: str
    command: str

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        self._write_request()

    def do_PUT(self) -> None:
        self._write_request()

    def _write_request(self) -> None:
        body = self._body()
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        token = self._token()  # type: ignore[attr-defined]
        self.fake.record(self.command, split.path, token)
        signed = parts[:1] == ["lfs-store"]  # like a storage URL: the href itself is the permit
        if not signed and (token is None or token not in self.fake.tokens):
            self._error(401, None, "Invalid credentials in Authorization header")  # type: ignore[attr-defined]
            return
        if parts == ["api", "repos", "create"]:
            self._create_repo(json.loads(body))
        elif parts == ["api", "validate-yaml"]:
            self._json({"errors": [], "warnings": []})  # type: ignore[attr-defined]
        elif parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self.fake.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")  # type: ignore[attr-defined]
            elif action == "branch":
                self._branch(repo, rev)
            elif action == "preupload":
                self._preupload(repo, rev, json.loads(body))
            elif action == "commit":
                self._commit(repo, rev, body)
            else:
                self._error(404, None, "Not found")  # type: ignore[attr-defined]
        elif parts[-4:] == ["info", "lfs", "objects", "batch"]:
            self._batch(json.loads(body))
        elif parts[:1] == ["lfs-store"] and len(parts) == 2:
            self._store(parts[1], body)
        elif parts == ["lfs-verify"]:
            ok = json.loads(body)["oid"] in self.fake.blobs
            self._json({}) if ok else self._error(404, None, "blob missing")  # type: ignore[attr-defined]
        else:
            self._error(404, None, "Not found")  # type: ignore[attr-defined]

    def _create_repo(self, payload: dict[str, Any]) -> None:
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        if repo_id in self.fake.repos:  # the Hub's 409 names the repo's url too
            body = {
                "error": "You already created this model repo",
                "url": f"{self.fake.url}/{repo_id}",
            }
            headers = {"Content-Type": "application/json", "X-Error-Message": body["error"]}
            self._send(409, json.dumps(body).encode(), headers)  # type: ignore[attr-defined]
            return
        repo = self.fake.add_repo(repo_id, {"main": {}})
        repo.private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self._json({"url": f"{self.fake.url}/{repo_id}", "name": repo_id})  # type: ignore[attr-defined]

    def _branch(self, repo: Any, branch: str) -> None:
        if branch in repo.revisions:
            self._error(409, None, "Reference already exists")  # type: ignore[attr-defined]
            return
        repo.revisions[branch] = self.fake.new_revision(repo, "main", {})
        self._json({})  # type: ignore[attr-defined]

    def _preupload(self, repo: Any, rev: str, payload: dict[str, Any]) -> None:
        revision = repo.find(rev)
        files = revision.files if revision is not None else {}
        answer = []
        for item in payload["files"]:
            path = item["path"]
            held = files.get(path)
            answer.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if is_lfs(path) else "regular",
                    "shouldIgnore": False,
                    "oid": None if held is None else oid_of(path, held),
                }
            )
        self._json({"files": answer, "commitOid": revision.sha if revision else None})  # type: ignore[attr-defined]

    def _batch(self, payload: dict[str, Any]) -> None:
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], item["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.fake.blobs:
                entry["actions"] = {
                    "upload": {"href": f"{self.fake.url}/lfs-store/{oid}", "header": {}},
                    "verify": {"href": f"{self.fake.url}/lfs-verify", "header": {}},
                }
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})  # type: ignore[attr-defined]

    def _store(self, oid: str, body: bytes) -> None:
        status = self.fake.take_upload_fail(oid)
        if status is not None:
            self._error(status, None, "upload cut off")  # type: ignore[attr-defined]
            return
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, None, "content does not match its oid")  # type: ignore[attr-defined]
            return
        self.fake.blobs[oid] = body
        self.fake.stored.append(oid)
        self._json({})  # type: ignore[attr-defined]

    def _commit(self, repo: Any, rev: str, body: bytes) -> None:
        if repo.find(rev) is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")  # type: ignore[attr-defined]
            return
        changes: dict[str, bytes] = {}
        summary = ""
        for line in body.decode().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value["summary"]
            elif item["key"] == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                blob = self.fake.blobs.get(value["oid"])
                if blob is None:
                    self._error(400, None, f"LFS object {value['oid']} is not in the store")  # type: ignore[attr-defined]
                    return
                changes[value["path"]] = blob
        revision = self.fake.new_revision(repo, rev, changes)
        repo.revisions[rev] = revision
        self.fake.commits.append(summary)
        url = f"{self.fake.url}/{repo.repo_id}/commit/{revision.sha}"
        self._json({"commitUrl": url, "commitOid": revision.sha})  # type: ignore[attr-defined]
