"""huggingface_hub failures as HubErrors that say what to do next (never showing the token)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ggufkit.core.errors import GGUFKitError, HubError, UsageError
from ggufkit.hub.settings import HubSettings
from ggufkit.hub.timeouts import hint as timeout_hint


def not_cached(
    where: str, settings: HubSettings, reason: str, missing: Sequence[str] = ()
) -> HubError:
    what = f"is missing {', '.join(missing[:3])}" if missing else "is not"
    if reason == "offline":
        return HubError(
            f"offline mode (HF_HUB_OFFLINE) is on and {where} {what} in the cache {settings.cache_dir}",
            hint=f"run `ggufkit download {where.split('@')[0]}` once with network access, or unset HF_HUB_OFFLINE",
        )
    if reason == "timeout":
        return HubError(
            f"the Hub{at(settings)} did not answer and {where} {what} in the cache "
            f"{settings.cache_dir}",
            hint=timeout_hint(),
        )
    return HubError(
        f"cannot reach the Hub{at(settings)} and {where} {what} in the cache {settings.cache_dir}",
        hint="check the network connection (and HF_ENDPOINT if set), then retry",
    )


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a connect, read, write or pool timeout."""
    import httpx2

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, httpx2.TimeoutException):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def at(settings: HubSettings) -> str:
    return f" at {settings.endpoint}" if settings.endpoint else ""


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Hub could not be reached (so the cache may serve instead)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionResolutionError

    if isinstance(exc, RevisionResolutionError) and exc.__cause__ is not None:
        return unreachable(exc.__cause__)  # resolve_revision had no cached ref to fall back on
    if isinstance(exc, httpx2.ProxyError):
        return False
    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code >= 500
    return isinstance(exc, (httpx2.TransportError, OfflineModeIsEnabled))


def _token_source(token: str | None) -> str:
    if token:
        return "the token given with --token"
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "the token in HF_TOKEN"
    return "the stored login token"


_LOGIN_HINT = "log in with `hf auth login`, set HF_TOKEN, or pass --token"


def translate(
    exc: Exception,
    repo_id: str,
    revision: str | None,
    token: str | None,
    settings: HubSettings,
    *,
    offline: bool,
) -> GGUFKitError:
    """A huggingface_hub failure as a HubError that says what to do (and never shows the token)."""
    import httpx2
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision or 'main'}"
    if isinstance(exc, hf.GatedRepoError):
        return HubError(
            f"{repo_id} is a gated repo: its files need an accepted licence and a token",
            hint=f"accept the terms on the repo's Hub page, then {_LOGIN_HINT}",
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError(
            f"Hub repo {repo_id} not found{at(settings)} (or it is private)",
            hint=f"check the id (owner/name); for a private repo {_LOGIN_HINT}",
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(
            f"revision {revision!r} not found in {repo_id}",
            hint="give an existing branch, tag or commit sha with --revision (default: main)",
        )
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return HubError(
            f"a file of {where} vanished from the Hub while downloading",
            hint="run the command again",
        )
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return HubError(
                f"the Hub rejected {_token_source(token)} (401 invalid credentials) for {repo_id}",
                hint="check or renew the token (`hf auth whoami`), or leave it out for a public repo",
            )
        if status == 403:
            return HubError(
                f"{_token_source(token)} has no access to {repo_id} (403)",
                hint="use a token with read access to this repo, or request access on its Hub page",
            )
        return HubError(
            f"the Hub answered HTTP {status} for {where}",
            hint="retry later; finished files are kept in the cache and not fetched again",
        )
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.RevisionResolutionError)):
        return not_cached(where, settings, "offline" if offline else "unreachable")
    if isinstance(exc, hf.HFValidationError):
        return UsageError(
            f"{repo_id!r} or its revision is not valid for the Hub", hint="use owner/name"
        )
    if timed_out(exc):
        return HubError(
            f"the Hub{at(settings)} did not answer in time while downloading {where}",
            hint=timeout_hint(),
        )
    if isinstance(exc, httpx2.TransportError):
        return HubError(
            f"the connection to the Hub{at(settings)} failed while downloading {where} ({type(exc).__name__})",
            hint="run the command again: finished files are kept and not fetched again",
        )
    if isinstance(exc, OSError):
        detail = str(exc).replace(token, "***") if token else str(exc)
        return HubError(
            f"downloading {where} failed: {detail.splitlines()[0] if detail else type(exc).__name__}",
            hint="check free disk space in the cache, then run the command again",
        )
    return HubError(
        f"downloading {where} failed ({type(exc).__name__})",
        hint="run again with GGUFKIT_DEBUG=1 for details",
    )
