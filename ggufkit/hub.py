"""Models from the Hugging Face Hub: pick the files a conversion needs and fetch them.

Downloads go through ``huggingface_hub.snapshot_download``, so the standard cache (``HF_HOME``,
``HF_HUB_CACHE``), tokens (``--token``, ``HF_TOKEN``, the stored login), ``HF_HUB_OFFLINE``
and progress bars all behave as in every other Hugging Face tool. Weight files are fetched into
the cache first by :func:`_fetch_blob_resumably`, so that a run cut off mid-file (Ctrl-C, a lost
connection, a killed process) is resumed by the next run instead of starting over.
The access token is never logged, stored or echoed in a message.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ggufkit.errors import GGUFKitError, HubError, InputError, UsageError
from ggufkit.fsutil import human_bytes, locked, sha256_file, write_text_atomic
from ggufkit.log import get_logger, progress_disabled

log = get_logger("hub")

# owner/name as the Hub accepts it; "." / ".." parts and "--" are refused by the Hub too.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # an LFS file's ETag is the sha256 of its content

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
    "vocab.txt", "chat_template.jinja", "chat_template.json", "*.tiktoken",
)  # fmt: skip
# Trainer checkpoints ship these beside the weights; they are not model weights.
TRAINING_STATE = (
    "training_args.bin",
    "optimizer*",
    "scheduler*",
    "rng_state*",
    "trainer_state.json",
)


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


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text


def check_repo_id(repo_id: str) -> None:
    if not looks_like_repo_id(repo_id):
        raise UsageError(
            f"{repo_id!r} is not a Hub repo id",
            hint="use the form owner/name, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        )


def is_safe_name(name: str) -> bool:
    """A repo file name that stays inside the directory it is downloaded to."""
    parts = PurePosixPath(name).parts
    return bool(parts) and "\\" not in name and not name.startswith("/") and ".." not in parts


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_model_files(names: Iterable[str]) -> list[str]:
    """The files a conversion needs: config, tokenizer, and one weight format.

    Safetensors when the repo has them, else PyTorch ``.bin``; only top-level files, so other
    formats in sub-folders (onnx/, checkpoints), images and training states are skipped.
    """
    top = sorted(n for n in names if "/" not in n and not _matches(n, TRAINING_STATE))
    chosen = [n for n in top if n in CONFIG_FILES or _matches(n, TOKENIZER_FILES)]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    # Mistral-style repos carry the same weights twice (model-*.safetensors and consolidated.*).
    preferred = [n for n in safetensors if n.startswith("model")]
    if safetensors:
        chosen += (preferred or safetensors) + [
            n for n in top if n.endswith(".safetensors.index.json")
        ]
    else:
        bins = [n for n in top if n.endswith(".bin")]
        preferred = [n for n in bins if n.startswith("pytorch_model")]
        chosen += (preferred or bins) + [n for n in top if n.endswith(".bin.index.json")]
    return sorted(set(chosen))


def weight_files(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.endswith((".safetensors", ".bin"))]


def model_files(directory: Path) -> list[Path]:
    """The files of a local model directory that a conversion reads (see select_model_files)."""
    names = [p.name for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []
    return [directory / name for name in select_model_files(names)]


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
    wanted = _Selection(repo_id, list(include or ()), list(exclude or ()))
    if progress_disabled():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        if offline:
            return _from_cache(repo_id, revision, wanted, local_dir, settings, reason="offline")
        try:
            commit, names = _listing(repo_id, revision, token, settings)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            log.warning("cannot reach the Hub (%s); looking in the local cache", type(exc).__name__)
            return _from_cache(repo_id, revision, wanted, local_dir, settings, reason="unreachable")
        files = wanted.choose(names, f"{repo_id}@{revision or 'main'}")
        return _fetch(repo_id, revision, commit, files, local_dir, token, settings)
    except GGUFKitError:
        raise
    except Exception as exc:
        raise _translate(exc, repo_id, revision, token, settings, offline=offline) from exc


@dataclass
class _Selection:
    repo_id: str
    include: list[str]
    exclude: list[str]

    def choose(self, names: Iterable[str], where: str) -> list[str]:
        from huggingface_hub.utils import filter_repo_objects

        names = list(names)
        if self.include:
            chosen = list(
                filter_repo_objects(
                    names, allow_patterns=self.include, ignore_patterns=self.exclude or None
                )
            )
            if not chosen:
                raise HubError(
                    f"no file of {where} matches --include {' '.join(self.include)}",
                    hint=f"the repo has: {', '.join(sorted(names)[:12])}",
                )
        else:
            chosen = list(
                filter_repo_objects(select_model_files(names), ignore_patterns=self.exclude or None)
            )
            if not weight_files(chosen):
                excluded = (
                    " (after --exclude)"
                    if self.exclude and weight_files(select_model_files(names))
                    else ""
                )
                raise HubError(
                    f"{where} has no model weights{excluded}: no *.safetensors or *.bin at its top level",
                    hint="check the repo id and --revision, or choose files with --include",
                )
        unsafe = [n for n in chosen if not is_safe_name(n)]
        if unsafe:
            raise HubError(
                f"{where} lists a file name that would escape the download directory: {unsafe[0]!r}",
                hint="do not download this repo; report it to its owner",
            )
        return sorted(chosen)


def _listing(
    repo_id: str, revision: str | None, token: str | None, settings: HubSettings
) -> tuple[str, list[str]]:
    """The commit sha ``revision`` points to, and the repo's file names at that commit."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint, token=token, library_name="ggufkit")
    info = api.model_info(repo_id, revision=revision)
    if not info.sha:
        raise HubError(
            f"the Hub gave no commit for {repo_id}", hint="check that HF_ENDPOINT is a Hub"
        )
    return info.sha, [s.rfilename for s in info.siblings or []]


def _fetch(
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

    log.info("downloading %d files of %s at %s", len(files), repo_id, commit[:12])
    if local_dir is None:
        for name in weight_files(files):
            _fetch_blob_resumably(repo_id, commit, name, token, settings)
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


def _fetch_blob_resumably(
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


def _from_cache(
    repo_id: str,
    revision: str | None,
    wanted: _Selection,
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
            raise _not_cached(where, settings, reason) from exc
        commit = None  # a --local-dir download whose ref was cleared from the main cache
    try:
        tree = get_cached_repo_tree(
            repo_id, revision=commit, cache_dir=settings.cache_dir, local_dir=local_dir
        )
        names = [entry.path for entry in tree]
    except CachedRepoTreeNotFoundError:
        # commit is None only for a local_dir download, whose files are in local_dir.
        base = Path(local_dir) if local_dir else _snapshot_dir(settings, repo_id, str(commit))
        names = [p.name for p in base.iterdir() if p.is_file()] if base.is_dir() else []
        if not names:
            raise _not_cached(where, settings, reason) from None
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
        raise _not_cached(where, settings, reason, missing=missing)
    log.info("using %s from the cache (%s)", where, (commit or "?")[:12])
    return ResolvedModel(path=Path(path), repo_id=repo_id, revision=revision, commit=commit)


def _snapshot_dir(settings: HubSettings, repo_id: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return (
        settings.cache_dir
        / repo_folder_name(repo_id=repo_id, repo_type="model")
        / "snapshots"
        / commit
    )


def _not_cached(
    where: str, settings: HubSettings, reason: str, missing: Sequence[str] = ()
) -> HubError:
    what = f"is missing {', '.join(missing[:3])}" if missing else "is not"
    if reason == "offline":
        return HubError(
            f"offline mode (HF_HUB_OFFLINE) is on and {where} {what} in the cache {settings.cache_dir}",
            hint=f"run `ggufkit download {where.split('@')[0]}` once with network access, or unset HF_HUB_OFFLINE",
        )
    return HubError(
        f"cannot reach the Hub{_at(settings)} and {where} {what} in the cache {settings.cache_dir}",
        hint="check the network connection (and HF_ENDPOINT if set), then retry",
    )


def _at(settings: HubSettings) -> str:
    return f" at {settings.endpoint}" if settings.endpoint else ""


def _unreachable(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

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


def _translate(
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
            f"Hub repo {repo_id} not found{_at(settings)} (or it is private)",
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
        return _not_cached(where, settings, "offline" if offline else "unreachable")
    if isinstance(exc, hf.HFValidationError):
        return UsageError(
            f"{repo_id!r} or its revision is not valid for the Hub", hint="use owner/name"
        )
    if isinstance(exc, httpx2.TransportError):
        return HubError(
            f"the connection to the Hub{_at(settings)} failed while downloading {where} ({type(exc).__name__})",
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
