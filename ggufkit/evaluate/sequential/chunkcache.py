"""A size-capped, content-addressed cache of per-chunk evaluation results.

A key hashes what decides a result: the model files' sha256, the context, and the chunk's own
tokens; never the chunk's position, so any order and any corpus that shares a chunk reuse it.
Baseline entries hold the scored positions' log-probabilities in 16 bits (what KL-divergence
needs): about ``(ctx/2) * (n_vocab + 8) * 2`` bytes a chunk, which is why the cache is capped. Past the cap,
the least recently used entries go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.fsutil import atomic_output
from ggufkit.core.log import get_logger
from ggufkit.core.paths import home

log = get_logger("evaluate.chunkcache")

DEFAULT_CAP_BYTES = 4 * 1024**3
CAP_ENV = "GGUFKIT_EVAL_CACHE_BYTES"
DIR_ENV = "GGUFKIT_EVAL_CACHE_DIR"


def cache_dir() -> Path:
    """``$GGUFKIT_EVAL_CACHE_DIR``, else ``$GGUFKIT_HOME/eval-cache``."""
    return Path(os.environ.get(DIR_ENV) or home() / "eval-cache")


def cap_bytes() -> int:
    """The cap: ``$GGUFKIT_EVAL_CACHE_BYTES`` or 4 GiB."""
    value = os.environ.get(CAP_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_CAP_BYTES


def chunk_key(*parts: str, tokens: list[int] | None = None) -> str:
    """sha256 over ``parts`` (model hashes, context, role) and the chunk's tokens."""
    digest = hashlib.sha256("\0".join(parts).encode())
    if tokens is not None:
        digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return digest.hexdigest()


class ChunkCache:
    """``get``/``put`` of small dicts of numpy arrays, one ``.npz`` file per key."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            with np.load(path) as data:
                values = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        self.hits += 1
        return values

    def put(self, key: str, values: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **values)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.npz"))

    def trim(self, cap: int | None = None) -> int:
        """Delete the least recently used entries until the cache fits ``cap``; bytes freed."""
        cap = cap_bytes() if cap is None else cap
        entries = []
        for path in self.root.glob("*/*.npz"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= cap:
                break
            path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("evaluation cache: %d bytes freed to stay under %d", freed, cap)
        return freed
