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
    offline: bool = False,
    upload: bool = False,
) -> GGUFKitError:
    """A huggingface_hub failure of a download (or, with ``upload``, of an upload) as a HubError
    that says what to do next; the token is never shown."""
    import httpx2
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision or 'main'}"
    doing = f"uploading to {where}" if upload else f"downloading {where}"
    kept = (
        "blobs already sent are not sent twice"
        if upload
        else "finished files are kept in the cache and not fetched again"
    )
    again = f"run the same command again: {kept}"
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
        return HubError(f"a file of {where} vanished from the Hub while {doing}", hint=again)
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        return _http_error(status, repo_id, where, token, settings, upload, kept)
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.RevisionResolutionError)):
        return not_cached(where, settings, "offline" if offline else "unreachable")
    if isinstance(exc, hf.HFValidationError):
        return UsageError(
            f"{repo_id!r} or its revision is not valid for the Hub", hint="use owner/name"
        )
    if timed_out(exc):
        return HubError(
            f"the Hub{at(settings)} did not answer in time while {doing}",
            hint=f"{timeout_hint()}; {again}" if upload else timeout_hint(),
        )
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, Exception):
        # huggingface_hub wraps a failed transfer to the file store in a RuntimeError: the
        # store's answer (an expired link, a dropped connection) says nothing about the token.
        return HubError(f"{exc} ({_short(exc.__cause__)})", hint=again)
    if isinstance(exc, httpx2.TransportError):
        return HubError(
            f"the connection to the Hub{at(settings)} failed while {doing} ({type(exc).__name__})",
            hint=again,
        )
    if isinstance(exc, OSError):
        detail = str(exc).replace(token, "***") if token else str(exc)
        return HubError(
            f"{doing} failed: {detail.splitlines()[0] if detail else type(exc).__name__}",
            hint="check free disk space in the cache, then run the command again",
        )
    return HubError(
        f"{doing} failed ({type(exc).__name__})",
        hint="run again with GGUFKIT_DEBUG=1 for details",
    )


def _http_error(
    status: int,
    repo_id: str,
    where: str,
    token: str | None,
    settings: HubSettings,
    upload: bool,
    kept: str,
) -> HubError:
    if status == 401:
        return HubError(
            f"the Hub rejected {_token_source(token)} (401 invalid credentials) for {repo_id}",
            hint="check or renew the token (`hf auth whoami`)"
            + (
                "; uploading needs one with write access"
                if upload
                else ", or leave it out for a public repo"
            ),
        )
    if status == 403:
        access = "write" if upload else "read"
        return HubError(
            f"{_token_source(token)} has no {access} access to {repo_id} (403)",
            hint=f"use a token with {access} access to this repo"
            + (" or its owner's namespace" if upload else ", or request access on its Hub page"),
        )
    return HubError(
        f"the Hub{at(settings)} answered HTTP {status} for {where}", hint=f"retry later; {kept}"
    )


def _short(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
