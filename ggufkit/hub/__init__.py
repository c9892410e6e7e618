"""Models from the Hugging Face Hub: pick the files a conversion needs and fetch them.

Downloads go through huggingface_hub's public API (``resolve_revision``, ``snapshot_download``),
so the standard cache (``HF_HOME``, ``HF_HUB_CACHE``), tokens (``--token``, ``HF_TOKEN``, the
stored login), ``HF_HUB_OFFLINE``, Xet storage and progress bars all behave as in every other
Hugging Face tool. A transfer cut mid-file is resumed within the run; a run that fails keeps the
files it finished, and the next run fetches only the rest.
The access token is never logged, stored or echoed in a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ggufkit.core.errors import GGUFKitError, InputError, UsageError
from ggufkit.core.log import get_logger, progress_disabled
from ggufkit.hub.cache import from_cache
from ggufkit.hub.errors import timed_out, translate, unreachable
from ggufkit.hub.fetch import fetch, listing
from ggufkit.hub.selection import (
    Selection,
    check_repo_id,
    is_safe_name,
    looks_like_repo_id,
    model_files,
    select_model_files,
)
from ggufkit.hub.settings import HubSettings, ResolvedModel, hub_settings

__all__ = [
    "HubSettings",
    "ResolvedModel",
    "cached_model",
    "download",
    "hub_settings",
    "is_safe_name",
    "looks_like_repo_id",
    "model_files",
    "resolve_model",
    "select_model_files",
]

log = get_logger("hub")


def resolve_model(
    ref: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_only: bool = False,
) -> ResolvedModel:
    """A local model directory as is, or a Hub id (owner/name) downloaded with the default files.

    ``local_only``: never contact the Hub; a Hub model must already be in the cache.
    """
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"{path} is a file, not a model directory",
                hint="give the directory that holds config.json and the weights",
                path=path,
            )
        if revision:
            raise UsageError(
                f"--revision applies to Hub models, but {path} is a local directory",
                hint="drop --revision, or give a Hub id (owner/name)",
            )
        return ResolvedModel(path=path.absolute())
    text = str(ref)
    if isinstance(ref, str) and looks_like_repo_id(text):
        return download(text, revision=revision, token=token, offline=local_only or None)
    raise InputError(
        f"{text}: no such directory, and not a Hub repo id (owner/name)",
        hint="give a local model directory or a Hub id such as owner/name",
        path=path,
    )


def cached_model(repo_id: str, *, revision: str | None = None) -> ResolvedModel | None:
    """The Hub model as already downloaded, or None; never touches the network."""
    try:
        return download(repo_id, revision=revision, offline=True)
    except GGUFKitError:
        return None


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    local_dir: str | Path | None = None,
    token: str | None = None,
    offline: bool | None = None,
) -> ResolvedModel:
    """Download a Hub model (config, tokenizer, weights by default) and pin the commit it resolved to.

    ``include``/``exclude`` are globs on repo paths; ``include`` replaces the default selection.
    ``offline`` (default: ``HF_HUB_OFFLINE``) uses the cache only.
    """
    check_repo_id(repo_id)
    if token is not None and not token.strip():
        raise UsageError("the access token is empty", hint="pass a token, or leave --token out")
    settings = hub_settings()
    if offline is None:
        offline = settings.offline
    wanted = Selection(repo_id, list(include or ()), list(exclude or ()))
    if progress_disabled():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        if offline:
            return from_cache(repo_id, revision, wanted, local_dir, settings, reason="offline")
        try:
            pinned, names = listing(repo_id, revision, token, local_dir, settings)
        except Exception as exc:
            if not unreachable(exc):
                raise
            log.warning("cannot reach the Hub (%s); looking in the local cache", type(exc).__name__)
            reason = "timeout" if timed_out(exc) else "unreachable"
            return from_cache(repo_id, revision, wanted, local_dir, settings, reason=reason)
        files = wanted.choose(names, f"{repo_id}@{revision or 'main'}")
        return fetch(repo_id, pinned, files, local_dir, token, settings)
    except GGUFKitError:
        raise
    except Exception as exc:
        raise translate(exc, repo_id, revision, token, settings, offline=offline) from exc
