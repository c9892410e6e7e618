"""Where a checkpoint's weights came from: the source files, their sha256s, and the merge record
(``ggufkit-merge.json``) that merge-delta leaves in a merged directory.

Source sha256s are the slow part (a 2 GB checkpoint hashes in seconds), so they come from, in
order: the Hugging Face cache's blob names (an LFS blob is named by its sha256), a cache keyed by
path, size, mtime and inode under GGUFKIT_HOME, or a background thread that hashes while the
tensors are converted.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.core import paths
from ggufkit.core.errors import InputError
from ggufkit.core.fsutil import locked, read_json, sha256_file, write_json_atomic
from ggufkit.core.log import get_logger
from ggufkit.formats.safetensors import find_weight_files

log = get_logger("formats.origin")

# delta.lora's CONFIG and WEIGHTS (formats/ imports nothing above core/)
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
PLACEHOLDER = "0" * 64  # a sha256 not known yet; the GGUF header is patched when it is
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SourceInfo:
    """Where the checkpoint came from, for the metadata."""

    model_dir: Path
    repo_id: str | None = None
    revision: str | None = None  # the commit when known
    delta_base: Path | None = None
    lora: Path | None = None  # a LoRA adapter merged into model_dir's weights


@dataclass
class SourceOrigin:
    """The files a GGUF records as its source: labels (``base:`` marks a delta's base) and sha256s.

    A directory written by merge-delta records the base and delta it was merged from
    (MERGE_RECORD); converting it records those, so that merge-then-convert and
    ``convert --delta-base`` name the same origin and write the same bytes.
    """

    labels: list[str]
    hashes: list[str]
    delta_base: str | None = None
    pending: SourceHashes | None = None  # hashing still running for some of ``hashes``
    lora: str | None = None  # the LoRA adapter's directory name (its files are ``lora:``)

    @classmethod
    def of(cls, info: SourceInfo) -> SourceOrigin:
        plain = info.delta_base is None and info.lora is None
        if plain and (recorded := read_merge_record(info.model_dir)):
            return recorded
        files = source_files(info.model_dir, info.delta_base, info.lora)
        pending = SourceHashes(files)
        base_name = info.delta_base.name if info.delta_base is not None else None
        lora = info.lora.name if info.lora is not None else None
        labels = [_label(f, info) for f in files]
        return cls(labels, pending.hashes, base_name, pending, lora)

    def result(self) -> list[str]:
        return self.pending.result() if self.pending is not None else list(self.hashes)

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


MERGE_RECORD = "ggufkit-merge.json"


def write_merge_record(merged_dir: Path, origin: SourceOrigin, shards: list[Path]) -> None:
    """Record in a merged directory what it was merged from; sizes and mtimes detect later edits."""
    record = {
        "delta_base": origin.delta_base,
        **({"lora": origin.lora} if origin.lora is not None else {}),
        "files": origin.labels,
        "sha256": origin.result(),
        "shards": {shard.name: _size_and_mtime(shard) for shard in shards},
    }
    (merged_dir / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _size_and_mtime(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_merge_record(model_dir: Path) -> SourceOrigin | None:
    """The origin merge-delta recorded, if it still describes the weights in ``model_dir``."""
    path = model_dir / MERGE_RECORD
    try:
        record = read_json(path, InputError, missing=None)  # no fifo, no depth bomb
        if record is None:
            return None
        shards = {name: [int(n) for n in stat] for name, stat in record["shards"].items()}
        labels, hashes = list(record["files"]), list(record["sha256"])
        base, lora = record["delta_base"], record.get("lora")
    except (InputError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    weights = {f.name: _size_and_mtime(f) for f in source_files(model_dir, None)}
    valid = (
        len(labels) == len(hashes)
        and all(isinstance(h, str) and _HEX64.match(h) for h in hashes)
        and isinstance(base, str | None)
        and isinstance(lora, str | None)
    )
    if weights != shards or not valid:
        log.warning("ignoring %s: the weights beside it are not the ones it describes", path)
        return None
    return SourceOrigin([str(label) for label in labels], hashes, base, lora=lora)


def _label(file: Path, info: SourceInfo) -> str:
    for root, prefix in ((info.model_dir, ""), (info.delta_base, "base:"), (info.lora, "lora:")):
        if root is not None and file.parent.absolute() == Path(root).absolute():
            return prefix + file.name
    return file.name


# --- hashing --------------------------------------------------------------------------------


def _blob_sha256(path: Path) -> str | None:
    """The sha256 a Hugging Face cache blob is named by (LFS files only), if ``path`` links to one."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _HEX64.match(target.name):
        return target.name
    return None


def _cache_file() -> Path:
    return paths.home() / "cache" / "sha256.json"


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def known_sha256(path: Path, cache: dict[str, Any] | None = None) -> str | None:
    blob = _blob_sha256(path)
    if blob:
        return blob
    entry = (cache if cache is not None else _load_cache()).get(str(path.resolve()))
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == _stat_key(path):
        return str(entry[3])
    return None


class SourceHashes:
    """sha256 of each source file; unknown ones are hashed in a background thread."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        cache = _load_cache()
        self.hashes: list[str] = [known_sha256(f, cache) or PLACEHOLDER for f in files]
        self._todo = [i for i, h in enumerate(self.hashes) if h == PLACEHOLDER]
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._todo:
            self._thread = threading.Thread(target=self._run, name="ggufkit-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            for i in self._todo:
                if self._stop.is_set():
                    return
                self.hashes[i] = sha256_file(self.files[i])
        except BaseException as exc:  # handed to the caller in result()
            self._error = exc

    def result(self) -> list[str]:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        if self._todo:
            self._remember()
        return list(self.hashes)

    def cancel(self) -> None:
        self._stop.set()

    def _remember(self) -> None:
        try:
            with locked(_cache_file().with_suffix(".lock"), what="the sha256 cache", timeout=10):
                # Entries of files that are gone (temporary checkpoints) are dropped.
                cache = {k: v for k, v in _load_cache().items() if os.path.exists(k)}
                for i in self._todo:
                    path = self.files[i]
                    cache[str(path.resolve())] = [*_stat_key(path), self.hashes[i]]
                write_json_atomic(_cache_file(), cache)
        except Exception as exc:  # a cache is an optimisation: never fail a conversion for it
            log.debug("could not update the sha256 cache: %s", exc)


def source_files(model_dir: Path, delta_base: Path | None, lora: Path | None = None) -> list[Path]:
    files = list(find_weight_files(model_dir))
    if delta_base is not None:
        files = list(find_weight_files(delta_base)) + files
    if lora is not None:  # what decides the adapter's effect: its settings and its weights
        files += [lora / name for name in LORA_FILES]
    return [f for f in files if os.path.isfile(f)]
