"""Where the Hub and its cache are (read from the environment per call), and what a resolved
model is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory on disk and, for a Hub model, where it came from."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # as asked: branch, tag or commit
    commit: str | None = None  # the commit sha it resolved to

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    def describe(self) -> str:
        if self.repo_id is None:
            return str(self.path)
        return f"{self.repo_id}@{self.commit or self.revision or 'main'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
        }


@dataclass(frozen=True)
class HubSettings:
    endpoint: str | None  # None: huggingface_hub's default
    cache_dir: Path
    offline: bool


def hub_settings() -> HubSettings:
    """The Hub settings from the environment as it is now.

    huggingface_hub freezes ``HF_ENDPOINT``/``HF_HOME``/``HF_HUB_OFFLINE`` when it is imported; reading
    them per call honours changes made afterwards (a long-lived session, a test harness).
    """
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    offline_flag = (
        (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    )
    endpoint = env.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    return HubSettings(
        endpoint=endpoint,
        cache_dir=Path(os.path.expandvars(os.path.expanduser(cache))),
        offline=offline_flag in ("1", "on", "yes", "true"),
    )
