"""Where ggufkit keeps its caches: ``GGUFKIT_HOME`` or the platform's user cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    override = os.environ.get("GGUFKIT_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        from platformdirs import user_cache_dir  # not imported when GGUFKIT_HOME says where

        path = Path(user_cache_dir("ggufkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_file(kind: str, key: str) -> Path:
    """Where a small derived fact keyed by ``key`` is cached: ``cache/<kind>/<crc32>.json``.
    The key is stored inside too (:func:`ggufkit.core.fsutil.read_keyed_json` checks it), so a
    32-bit name needs no hashlib (whose OpenSSL load costs every quick command a few ms)."""
    import zlib

    return home() / "cache" / kind / f"{zlib.crc32(key.encode()):08x}.json"


def downloads_dir() -> Path:
    path = home() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def builds_dir() -> Path:
    path = home() / "builds"
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root() -> Path | None:
    """The source checkout ggufkit runs from (editable install), or None when installed as a wheel."""
    candidate = Path(__file__).resolve().parents[2]  # ggufkit/core/paths.py -> the checkout
    if (candidate / "pyproject.toml").is_file() and (candidate / "ggufkit").is_dir():
        return candidate
    return None
