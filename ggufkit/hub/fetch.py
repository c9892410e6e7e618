"""Fetching from the Hub: the listing at a pinned commit, weight blobs fetched resumably, then
``snapshot_download`` for the rest."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from ggufkit.core.errors import HubError
from ggufkit.core.fsutil import human_bytes, locked, sha256_file, write_text_atomic
from ggufkit.core.log import get_logger
from ggufkit.hub.selection import weight_files
from ggufkit.hub.settings import HubSettings, ResolvedModel
from ggufkit.hub.timeouts import install as install_timeouts

log = get_logger("hub")

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # an LFS file's ETag is the sha256 of its content


def listing(
    repo_id: str, revision: str | None, token: str | None, settings: HubSettings
) -> tuple[str, list[str]]:
    """The commit sha ``revision`` points to, and the repo's file names at that commit."""
    from huggingface_hub import HfApi

    install_timeouts()
    api = HfApi(endpoint=settings.endpoint, token=token, library_name="ggufkit")
    info = api.model_info(repo_id, revision=revision)
    if not info.sha:
        raise HubError(
            f"the Hub gave no commit for {repo_id}", hint="check that HF_ENDPOINT is a Hub"
        )
    return info.sha, [s.rfilename for s in info.siblings or []]


def fetch(
    repo_id: str,
    revision: str | None,
    commit: str,
    files: list[str],
    local_dir: str | Path | None,
    token: str | None,
    settings: HubSettings,
) -> ResolvedModel:
    from huggingface_hub import ResolvedRevision, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    install_timeouts()
    log.info("downloading %d files of %s at %s", len(files), repo_id, commit[:12])
    if local_dir is None:
        for name in weight_files(files):
            fetch_blob_resumably(repo_id, commit, name, token, settings)
    if revision is None or not _COMMIT.fullmatch(revision):
        # Pinned to the commit just listed, so the files match the listing; the ref is written here
        # because snapshot_download skips it for a resolved revision, and offline runs look it up.
        storage = settings.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
        write_text_atomic(storage / "refs" / (revision or "main"), commit)
    path = snapshot_download(
        repo_id,
        revision=ResolvedRevision(commit, initial=revision, repo_id=repo_id),
        allow_patterns=[glob.escape(name) for name in files],
        cache_dir=settings.cache_dir,
        local_dir=local_dir,
        token=token,
        endpoint=settings.endpoint,
        library_name="ggufkit",
    )
    return ResolvedModel(path=Path(path), repo_id=repo_id, revision=revision, commit=commit)


def fetch_blob_resumably(
    repo_id: str, commit: str, name: str, token: str | None, settings: HubSettings
) -> None:
    """Put a weight file's blob into the cache, resuming what an interrupted run left.

    huggingface_hub resumes a broken transfer only within one call: each call writes to a fresh
    temporary name. Here the bytes go to ``blobs/<etag>.ggufkit.incomplete`` and are kept across
    runs, the next run asks for the rest with a Range request, and the blob is checked (size, and
    sha256 for LFS files) before it is renamed into place; snapshot_download then links it.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, name, revision=commit, endpoint=settings.endpoint)
    meta = get_hf_file_metadata(url, token=token, library_name="ggufkit")
    if meta.etag is None or meta.size is None or (meta.xet_file_data and _xet_available()):
        return  # huggingface_hub's own path (Xet storage resumes by itself)
    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    blob = settings.cache_dir / folder / "blobs" / meta.etag
    if blob.exists():
        return
    lock = settings.cache_dir / ".locks" / folder / f"{meta.etag}.ggufkit.lock"  # beside the Hub's
    partial = blob.with_name(f"{meta.etag}.ggufkit.incomplete")
    headers = build_hf_headers(token=token, library_name="ggufkit")
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the Hub
    with locked(lock, what=f"the download of {name}"):
        if blob.exists():
            return
        blob.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("ab") as handle:
            have = handle.tell()
            if have > meta.size:
                handle.truncate(0)
                have = 0
            if have:
                log.info(
                    "%s: resuming at %s of %s", name, human_bytes(have), human_bytes(meta.size)
                )
            http_get(
                meta.location,
                handle,
                resume_size=have,
                headers=headers,
                expected_size=meta.size,
                displayed_filename=name,
            )
        size = partial.stat().st_size
        digest = sha256_file(partial) if _SHA256.fullmatch(meta.etag) else meta.etag
        if size != meta.size or digest != meta.etag:
            partial.unlink()
            raise HubError(
                f"{name} of {repo_id} arrived damaged ({size} bytes, sha256 {digest[:12]}…; "
                f"expected {meta.size} bytes, {meta.etag[:12]}…)",
                hint="run the download again: the damaged copy was removed",
            )
        os.replace(partial, blob)


def _xet_available() -> bool:
    try:
        from huggingface_hub.utils._runtime import is_xet_available
    except ImportError:
        return False
    return bool(is_xet_available())
