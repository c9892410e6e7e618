"""Where ggufkit keeps its caches: ``GGUFKIT_HOME`` or the platform's user cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def home() -> Path:
    override = os.environ.get("GGUFKIT_HOME")
    path = Path(override).expanduser() if override else Path(user_cache_dir("ggufkit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
