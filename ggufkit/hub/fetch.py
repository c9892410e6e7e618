"""Fetching from the Hub through huggingface_hub's public API: the revision resolved to a commit
(its ref recorded in the cache), the file names at that commit, then ``snapshot_download`` of the
chosen files pinned to it. Transfers, retries, Xet storage and the cache layout are
huggingface_hub's (and hf-xet's)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from ggufkit.core.log import get_logger
from ggufkit.hub.settings import HubSettings, ResolvedModel
from ggufkit.hub.timeouts import install as install_timeouts

if TYPE_CHECKING:
    from huggingface_hub import ResolvedRevision

log = get_logger("hub")


def listing(
    repo_id: str,
    revision: str | None,
    token: str | None,
    local_dir: str | Path | None,
    settings: HubSettings,
) -> tuple[ResolvedRevision, list[str]]:
    """The commit ``revision`` points to, and the repo's file names at that commit.

    ``resolve_revision`` records ``refs/<revision>`` in the cache, so later offline runs find the
    commit. A commit's listing never changes: one that an earlier download cached is used as is.
    """
    from huggingface_hub import HfApi, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    install_timeouts()
    api = HfApi(endpoint=settings.endpoint, token=token, library_name="ggufkit")
    pinned = api.resolve_revision(
        repo_id, revision=revision, cache_dir=settings.cache_dir, token=token
    )
    try:
        tree = get_cached_repo_tree(
            repo_id, revision=pinned.resolved, cache_dir=settings.cache_dir, local_dir=local_dir
        )
        return pinned, [entry.path for entry in tree]
    except CachedRepoTreeNotFoundError:
        return pinned, api.list_repo_files(repo_id, revision=pinned.resolved)


def fetch(
    repo_id: str,
    pinned: ResolvedRevision,
    files: list[str],
    local_dir: str | Path | None,
    token: str | None,
    settings: HubSettings,
) -> ResolvedModel:
    """Download ``files`` of ``repo_id`` at the commit ``pinned`` resolved to.

    huggingface_hub resumes a transfer cut within the call (a Range request) and keeps every
    finished file, so a run that fails fetches only what is missing the next time.
    """
    from huggingface_hub import snapshot_download

    install_timeouts()
    log.info("downloading %d files of %s at %s", len(files), repo_id, pinned.resolved[:12])
    path = snapshot_download(
        repo_id,
        revision=pinned,
        allow_patterns=[glob.escape(name) for name in files],
        cache_dir=settings.cache_dir,
        local_dir=local_dir,
        token=token,
        endpoint=settings.endpoint,
        library_name="ggufkit",
    )
    return ResolvedModel(
        path=Path(path), repo_id=repo_id, revision=pinned.initial, commit=pinned.resolved
    )
