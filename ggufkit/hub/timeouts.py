"""Every Hub call with a timeout: a server that accepts and never answers fails the call.

huggingface_hub's own client has no default timeout, and some calls (``model_info``,
``create_repo``, ``create_commit``) pass none, so a stalled server would hang ``download`` and
``publish`` for good. :func:`install` gives its client a request hook that fills in whatever
timeout a call left out (connect, read, write, pool) with ``GGUFKIT_HUB_TIMEOUT`` seconds
(default :data:`DEFAULT_SECONDS`); calls that set their own (huggingface_hub's
``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) keep it.
"""

from __future__ import annotations

from typing import Any

from ggufkit.core.env import positive_number

DEFAULT_SECONDS = 30.0
VARIABLE = "GGUFKIT_HUB_TIMEOUT"
_installed: float | None = None


def seconds() -> float:
    """The timeout for each connect and each read or write, from ``GGUFKIT_HUB_TIMEOUT``."""
    return positive_number(VARIABLE, DEFAULT_SECONDS)


def hint() -> str:
    """What to say when a Hub call timed out."""
    return (
        f"the Hub did not answer within {seconds():g} s; check the network and HF_ENDPOINT, "
        f"or allow more time with {VARIABLE}=SECONDS (downloads of files: HF_HUB_DOWNLOAD_TIMEOUT)"
    )


def install() -> None:
    """Make huggingface_hub's client time out (once per value of ``GGUFKIT_HUB_TIMEOUT``)."""
    global _installed
    limit = seconds()
    if _installed == limit:
        return
    import httpx2
    from huggingface_hub.utils import _http, set_client_factory

    def fill_in(request: httpx2.Request) -> None:
        given: dict[str, Any] = dict(request.extensions.get("timeout") or {})
        for kind in ("connect", "read", "write", "pool"):
            if given.get(kind) is None:
                given[kind] = limit
        request.extensions = {**request.extensions, "timeout": given}

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook, fill_in]},
            follow_redirects=True,
            timeout=limit,
        )

    set_client_factory(factory)
    _installed = limit
