"""``out/manifest.json``: for every artefact, what it was made from, how, with what, and its checks.

One record per output file (or directory), keyed by its path relative to the manifest:
inputs (Hub repo + commit, or local path, with the sha256 of each file), the step, command and
options, tool versions, size and sha256 of the output, timings, and eval results when present.
Every write is a locked read-modify-write and an atomic rename, so concurrent commands (an eval
beside a quantize) never lose each other's records or leave a half-written file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit import __version__
from ggufkit.core.errors import InputError, WorkspaceError, disk_full
from ggufkit.core.fsutil import locked, read_json, write_json_atomic
from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    from ggufkit.hub import ResolvedModel

log = get_logger("manifest")

MANIFEST_NAME = "manifest.json"
MOVE_ASIDE = "move it aside; the next run of each step writes a new one"
FORMAT = 1


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- hashing ----------------------------------------------------------------------------------


def sha256_files(files: Sequence[Path]) -> list[str]:
    """sha256 of each file, hashed once: later calls read the cache the converter keeps
    (keyed by path, size, mtime and inode; Hub blobs are named by their sha256)."""
    from ggufkit.formats.origin import SourceHashes

    return SourceHashes(list(files)).result() if files else []


def sha256_of(path: Path) -> str:
    return sha256_files([path])[0]


def _tree_digest(files: Mapping[str, str]) -> str:
    """One sha256 for a directory artefact: over its sorted (name, sha256) pairs."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


# --- input descriptions -----------------------------------------------------------------------


def model_input(model: ResolvedModel, *, role: str = "model") -> dict[str, Any]:
    """A model directory as a step input: where it came from and the sha256 of each file read."""
    from ggufkit.hub import model_files

    files = model_files(model.path)
    record: dict[str, Any] = {"role": role}
    if model.is_hub:
        record.update(
            kind="hub", repo_id=model.repo_id, revision=model.revision, commit=model.commit
        )
    else:
        record.update(kind="local", path=str(model.path))
    record["files"] = dict(zip([f.name for f in files], sha256_files(files), strict=True))
    return record


def file_input(path: Path, *, role: str = "input") -> dict[str, Any]:
    """A file (e.g. the f16 GGUF a quantization reads) as a step input."""
    described = describe_output(path)  # a split set's first shard: the whole set
    return {
        "role": role,
        "kind": "file",
        "path": str(path),
        "sha256": described["sha256"],
        "size": described["size"],
    }


def fingerprint(step: str, inputs: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> str:
    """What decides whether a step must run again: input contents and options, not paths or times."""
    content = [
        (i.get("role"), i.get("sha256"), sorted((i.get("files") or {}).items())) for i in inputs
    ]
    blob = json.dumps(
        {"step": step, "inputs": content, "options": options}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# --- environment ------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, str | None]:
    """The versions that decide an artefact's bytes (package metadata only: nothing heavy imported)."""
    from ggufkit.llamacpp import patches
    from ggufkit.llamacpp.source import read_pin

    try:
        llama_cpp: str | None = read_pin().llama_cpp_commit
        applied = patches.patch_files()
        # The committed patches to that source: names and their digest (as in the build key).
        names = ",".join(p.name for p in applied) or "none"
        digest = f" ({patches.patches_digest(applied)[:16]})" if applied else ""
        llama_cpp_patches: str | None = names + digest
    except (
        Exception
    ):  # the manifest must not fail on a broken lock file; `ggufkit build` reports it
        llama_cpp = llama_cpp_patches = None
    return {
        "ggufkit": __version__,
        "llama_cpp_commit": llama_cpp,
        "llama_cpp_patches": llama_cpp_patches,
        "gguf": _version("gguf"),
        "transformers": _version("transformers"),
        "torch": _version("torch"),
        "huggingface_hub": _version("huggingface_hub"),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }


# --- the manifest -----------------------------------------------------------------------------


@dataclass
class Manifest:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """The manifest at ``path``; an empty one when the file does not exist yet."""
        path = Path(path)
        data = read_json(path, WorkspaceError, hint=MOVE_ASIDE, missing={})
        if not isinstance(data, dict) or not isinstance(data.get("artefacts", {}), dict):
            raise WorkspaceError(
                f"the manifest {path} is not a ggufkit manifest",
                hint=MOVE_ASIDE,
                path=path,
            )
        data.setdefault("format", FORMAT)
        data.setdefault("artefacts", {})
        return cls(path=path, data=data)

    @property
    def artefacts(self) -> dict[str, dict[str, Any]]:
        artefacts: dict[str, dict[str, Any]] = self.data["artefacts"]
        return artefacts

    def key(self, artefact: str | Path) -> str:
        """Artefacts are keyed by their path relative to the manifest (absolute when outside)."""
        absolute = Path(artefact).absolute()
        try:
            return absolute.relative_to(self.path.parent.absolute()).as_posix()
        except ValueError:
            return absolute.as_posix()

    def get(self, artefact: str | Path) -> dict[str, Any] | None:
        return self.artefacts.get(self.key(artefact))

    def save(self) -> None:
        self.data["format"] = FORMAT
        self.data["updated"] = now_iso()
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            if (full := disk_full(exc, f"the manifest {self.path}", self.path)) is not None:
                raise full from exc
            raise WorkspaceError(
                f"cannot write the manifest {self.path}: {exc.strerror or exc}",
                hint="check the workspace folder's permissions, then run again",
                path=self.path,
            ) from exc


@contextmanager
def editing(manifest_path: str | Path) -> Iterator[Manifest]:
    """Load, let the caller change, and save the manifest under a lock (one writer at a time)."""
    manifest_path = Path(manifest_path)
    lock = manifest_path.with_name(f".{manifest_path.name}.lock")
    with locked(lock, what=f"the manifest {manifest_path}", timeout=120):
        manifest = Manifest.load(manifest_path)
        yield manifest
        manifest.save()


def describe_output(path: Path) -> dict[str, Any]:
    """Size and sha256 of an output file, or of each file of an output directory or split set."""
    if not path.exists():
        raise InputError(f"{path} does not exist, so it cannot be recorded", path=path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        hashes = dict(
            zip([f.relative_to(path).as_posix() for f in files], sha256_files(files), strict=True)
        )
        return {
            "kind": "dir",
            "size": sum(f.stat().st_size for f in files),
            "sha256": _tree_digest(hashes),
            "files": hashes,
        }
    from ggufkit.formats.gguf_split import split_set

    shards = split_set(path) if path.name.endswith(".gguf") else [path]
    if len(shards) > 1:  # the first shard stands for its split set: record every shard
        shard_hashes = dict(zip([f.name for f in shards], sha256_files(shards), strict=True))
        return {
            "kind": "split",
            "size": sum(f.stat().st_size for f in shards),
            "sha256": _tree_digest(shard_hashes),
            "files": shard_hashes,
        }
    return {"kind": "file", "size": path.stat().st_size, "sha256": sha256_of(path)}


def record_artefact(
    manifest_path: str | Path,
    artefact_path: str | Path,
    *,
    step: str,
    inputs: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    command: Sequence[str],
    seconds: float,
    started: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record how ``artefact_path`` was made (replacing any older record, eval results included:
    they described the old bytes). ``command`` must not contain secrets. Returns the record."""
    artefact_path = Path(artefact_path)
    record: dict[str, Any] = {
        "step": step,
        **describe_output(artefact_path),
        "inputs": [dict(i) for i in inputs],
        "options": dict(options),
        "fingerprint": fingerprint(step, inputs, options),
        "command": list(command),
        "started": started or now_iso(),
        "seconds": round(seconds, 3),
        "environment": environment(),
        **(extra or {}),
    }
    with editing(manifest_path) as manifest:
        key = manifest.key(artefact_path)
        manifest.artefacts[key] = {"path": key, **record}
    log.debug("recorded %s in %s", key, manifest_path)
    return manifest.artefacts[key]


def record_eval(
    manifest_path: str | Path, artefact_path: str | Path, results: Mapping[str, Any]
) -> dict[str, Any]:
    """Add eval results to an artefact's record (merged with earlier ones); returns the record.

    The results are tied to the artefact's current sha256: an artefact unknown to the manifest,
    or changed since it was recorded, gets a fresh record without the old results.
    """
    artefact_path = Path(artefact_path)
    current = describe_output(artefact_path)
    with editing(manifest_path) as manifest:
        key = manifest.key(artefact_path)
        record = manifest.artefacts.get(key)
        if record is None or record.get("sha256") != current["sha256"]:
            if record is not None:
                log.warning("%s changed since it was recorded; its old record is replaced", key)
            record = {"path": key, "step": "external", **current, "environment": environment()}
            manifest.artefacts[key] = record
        evals = record.setdefault("eval", {})
        evals.update(json.loads(json.dumps(dict(results), default=str)))
        record["eval_updated"] = now_iso()
    return record


def remove_other_forms(manifest_path: Path, planned: Path, output: Path) -> None:
    """A step wrote ``output`` for ``planned`` (itself, or a split set's first shard): remove the
    other form an earlier run left (the single file, or another split), and its record, so that
    nothing stale is published."""
    from ggufkit.formats.gguf_split import shards_named_like, split_set

    keep = {p.absolute() for p in (split_set(output) if output.exists() else [output])}
    stale = [p for p in (planned, *shards_named_like(planned)) if p.exists()]
    stale = [p for p in stale if p.absolute() not in keep]
    if stale:
        with editing(manifest_path) as manifest:
            for path in stale:
                manifest.artefacts.pop(manifest.key(path), None)
                path.unlink()
