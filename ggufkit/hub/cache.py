"""Models already in the Hugging Face cache: offline runs and runs that cannot reach the Hub."""

from __future__ import annotations

import glob
from pathlib import Path

from ggufkit.core.log import get_logger
from ggufkit.hub.errors import not_cached
from ggufkit.hub.selection import Selection
from ggufkit.hub.settings import HubSettings, ResolvedModel

log = get_logger("hub")


def from_cache(
    repo_id: str,
    revision: str | None,
    wanted: Selection,
    local_dir: str | Path | None,
    settings: HubSettings,
    *,
    reason: str,
) -> ResolvedModel:
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, RevisionResolutionError

    where = f"{repo_id}@{revision or 'main'}"
    commit: str | None
    try:
        commit = (
            HfApi(endpoint=settings.endpoint)
            .resolve_revision(
                repo_id, revision=revision, cache_dir=settings.cache_dir, local_files_only=True
            )
            .resolved
        )
    except RevisionResolutionError as exc:
        if local_dir is None or not Path(local_dir).is_dir():
            raise not_cached(where, settings, reason) from exc
        commit = None  # a --local-dir download whose ref was cleared from the main cache
    try:
        tree = get_cached_repo_tree(
            repo_id, revision=commit, cache_dir=settings.cache_dir, local_dir=local_dir
        )
        names = [entry.path for entry in tree]
    except CachedRepoTreeNotFoundError:
        # commit is None only for a local_dir download, whose files are in local_dir.
        base = Path(local_dir) if local_dir else _snapshot_dir(settings, repo_id, str(commit))
        names = [p.name for p in base.iterdir() if p.is_file()] if base and base.is_dir() else []
        if not names:
            raise not_cached(where, settings, reason) from None
    files = wanted.choose(names, where)
    path = snapshot_download(
        repo_id,
        revision=commit,
        allow_patterns=[glob.escape(name) for name in files],
        cache_dir=settings.cache_dir,
        local_dir=local_dir,
        local_files_only=True,
    )
    missing = [name for name in files if not (Path(path) / name).is_file()]
    if missing:
        raise not_cached(where, settings, reason, missing=missing)
    log.info("using %s from the cache (%s)", where, (commit or "?")[:12])
    return ResolvedModel(path=Path(path), repo_id=repo_id, revision=revision, commit=commit)


def _snapshot_dir(settings: HubSettings, repo_id: str, commit: str) -> Path | None:
    """The cached snapshot folder of ``commit``, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=commit, cache_dir=settings.cache_dir, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        return None
