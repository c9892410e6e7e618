"""Atomic outputs, free-space checks, hashing and locks: the file-system rules every command obeys.

An output is written under a temporary name of its own in its final directory and renamed only
when complete, so a crash or Ctrl-C never leaves a half-written file under the final name
(``core.partials``: the names, the writers' leases, the cleanup of what killed runs left).

hashlib, shutil and psutil are imported where they are used: ``ggufkit quantize`` goes through
this module on its way to llama-quantize, and its start-up is part of its overhead.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ggufkit.core.errors import (
    DiskSpaceError,
    GGUFKitError,
    InputError,
    MemoryShortageError,
    UsageError,
)
from ggufkit.core.partials import (  # re-exported: one place for every file-system rule
    PARTIAL_SUFFIX,
    _heartbeat,
    _remove,
    clear_stale_partials,
    locked,
    output_lock,
    partial_path,
    partials,
    stale_partials,
)

__all__ = [
    "PARTIAL_SUFFIX",
    "clear_stale_partials",
    "locked",
    "output_lock",
    "partial_path",
    "partials",
    "stale_partials",
]


def path_key(path: Path) -> str:
    """A path as compared on any disk: absolute, normalised, case folded."""
    return os.path.normcase(os.path.abspath(path)).casefold()


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are (or would be) one file: the same file where both exist
    (through links), or names that differ only in case, which are one file on case-insensitive
    disks (the macOS and Windows defaults), so the answer does not depend on where it runs."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    with contextlib.suppress(OSError, RuntimeError):
        if path_key(Path(a).resolve()) == path_key(Path(b).resolve()):
            return True
    return path_key(a) == path_key(b)


def _inside(path: Path, folder: Path) -> bool:
    try:
        target, root = path_key(path.resolve()), path_key(folder.resolve())
    except (OSError, RuntimeError):
        return False
    return target.startswith(root.rstrip(os.sep) + os.sep)


def _is_gguf(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as file:
        return file.read(4) == b"GGUF"
    return False


def stays_inside(ref: str) -> bool:
    """Whether ``ref``, a path written in a plan or workspace file, names something inside that
    file's folder: relative, no ``..``, no drive or root (on any OS), not a home (``~``)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not ref or ref.startswith("~"):
        return False
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(ref)
        if path.is_absolute() or path.drive or path.root or ".." in path.parts:
            return False
    return True


def check_output_path(final: Path, *, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that is a directory or would replace an input: the same file (through
    links, names that differ only in case), or a file inside an input directory other than a GGUF
    (an earlier output: no checkpoint is read from one)."""
    final = Path(final)
    if final.is_dir():
        raise UsageError(
            f"output path {final} is a directory",
            hint="give a file name, e.g. -o " + str(final / "model.gguf"),
        )
    for source in map(Path, inputs):
        if source.is_dir():
            if (
                final.exists()
                and not _is_gguf(final)
                and (
                    _inside(final, source)
                    or any(same_file(final, f) for f in source.iterdir() if f.is_file())
                )
            ):
                raise UsageError(
                    f"output {final} would replace a file of the input {source}",
                    hint="choose an -o outside it, or a new name (inputs are never modified)",
                )
        elif same_file(final, source):
            case = (
                " (names that differ only in case are one file on macOS and Windows disks)"
                if str(final.absolute()) != str(source.absolute())
                and path_key(final) == path_key(source)
                else ""
            )
            raise UsageError(
                f"output {final} is the same file as the input {source.name}{case}",
                hint="choose another -o or --outdir (inputs are never modified)",
            )
    return final


REPLACE_TRIES = 10  # Windows: a virus scanner or indexer holds a new file for a moment


def replace_file(tmp: Path, final: Path, *, tries: int = REPLACE_TRIES) -> None:
    """``os.replace`` that survives a brief lock on Windows (a scanner or indexer opening the new
    file) and names the cause when ``final`` stays open (another program, a memory map)."""
    for attempt in range(tries):
        try:
            os.replace(tmp, final)
            return
        except PermissionError as exc:
            if attempt + 1 < tries:
                time.sleep(0.05 * (attempt + 1))
                continue
            raise GGUFKitError(
                f"cannot replace {final}: {exc.strerror or exc}",
                hint=f"close the program that has {final.name} open (on Windows an open or "
                "memory-mapped file cannot be replaced), then run again",
            ) from exc


@contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success, remove it on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_partials(final)
    tmp = partial_path(final)
    _heartbeat.add(tmp)
    try:
        yield tmp
        replace_file(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _heartbeat.discard(tmp)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_output` for a directory; an existing ``final`` is replaced only on
    success, and what a killed run left is removed first."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_partials(final)
    tmp = partial_path(final)
    tmp.mkdir()
    _heartbeat.add(tmp)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            replace_file(final, old)
            replace_file(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            replace_file(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _heartbeat.discard(tmp)


def write_text_atomic(final: str | Path, text: str) -> Path:
    final = Path(final)
    with atomic_output(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return final


def write_json_atomic(final: str | Path, data: Any) -> Path:
    return write_text_atomic(final, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


_RAISE: Any = object()


# Hugging Face's own files, a JSON object each: anything else is refused as it is read.
OBJECT_FILES = frozenset(
    {"config.json", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
     "generation_config.json", "special_tokens_map.json", "model.safetensors.index.json"}
)  # fmt: skip
MAX_SETTINGS_BYTES = 512 * 1024 * 1024  # config/tokenizer JSON and TOML: far above any real one


def read_settings_text(
    path: str | Path,
    error: type[GGUFKitError],
    *,
    hint: str | None = None,
    limit: int = MAX_SETTINGS_BYTES,
) -> str:
    """The UTF-8 text of a small settings file (JSON, TOML), refused before it is read when it is
    not a regular file (a fifo would block forever, a device never ends) or larger than
    ``limit``. A missing file raises FileNotFoundError for the caller to word."""
    import stat

    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(
                f"{path} is not a regular file (a directory, fifo or device)",
                hint=hint or "replace it with the real file",
                path=path,
            )
        if info.st_size > limit:
            raise error(
                f"{path} is {human_bytes(info.st_size)}, more than the {human_bytes(limit)} "
                "such a file may be",
                hint=hint or "replace it with the real file",
                path=path,
            )
        data = handle.read(info.st_size + 1)  # read(limit) would allocate the whole limit
    if len(data) > info.st_size:
        raise error(f"{path} grew while it was read", hint="run again", path=path)
    return data.decode("utf-8")  # a UnicodeDecodeError is a ValueError to the callers


def read_json(
    path: str | Path,
    error: type[GGUFKitError],
    *,
    hint: str | None = None,
    missing_hint: str | None = None,
    missing: Any = _RAISE,
) -> Any:
    """The JSON in ``path``. A file that cannot be read or parsed raises ``error`` naming it, with
    ``hint``; a missing file does too (with ``missing_hint`` if given), unless ``missing`` is the
    value to use instead. Non-regular files, absurd sizes, nesting too deep for the parser and
    integers too long to convert are refused the same way."""
    path, hint = Path(path), hint or "restore the original file"
    try:
        data = json.loads(read_settings_text(path, error, hint=hint))
    except FileNotFoundError as exc:
        if missing is not _RAISE:
            return missing
        raise error(f"{path} is missing", hint=missing_hint or hint, path=path) from exc
    except RecursionError as exc:
        raise error(f"{path} is nested too deeply to be read", hint=hint, path=path) from exc
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not valid JSON: {_short(exc)}", hint=hint, path=path) from exc
    if path.name in OBJECT_FILES and not isinstance(data, dict):
        raise error(f"{path} does not hold a JSON object", hint=hint, path=path)
    return data


def read_toml(path: str | Path, error: type[GGUFKitError], *, hint: str | None = None) -> Any:
    """The TOML in ``path``, with :func:`read_json`'s refusals; a missing file raises
    FileNotFoundError for the caller to word."""
    import tomllib

    path, hint = Path(path), hint or "fix the file, or write it again"
    try:
        return tomllib.loads(read_settings_text(path, error, hint=hint))
    except FileNotFoundError:
        raise
    except RecursionError as exc:
        raise error(f"{path} is nested too deeply to be read", hint=hint, path=path) from exc
    except (OSError, ValueError) as exc:  # TOMLDecodeError, an over-long integer
        raise error(f"{path}: not valid TOML ({_short(exc)})", hint=hint, path=path) from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def read_keyed_json(path: Path, key: str) -> Any | None:
    """What :func:`write_keyed_json` stored at ``path`` for ``key``; None when missing,
    unreadable or stored for another key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data.get("data")


def write_keyed_json(path: Path, key: str, data: Any) -> None:
    """Cache ``data`` for ``key`` (best effort: a read-only cache only costs the next run)."""
    with contextlib.suppress(OSError):
        write_json_atomic(path, {"key": key, "data": data})


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent).

    ``GGUFKIT_FAKE_FREE_BYTES`` overrides the probe so that tests can simulate a full disk.
    """
    fake = os.environ.get("GGUFKIT_FAKE_FREE_BYTES")
    if fake:
        return int(fake)
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if hasattr(os, "statvfs"):  # shutil.disk_usage's own POSIX answer, without loading shutil
        stat = os.statvfs(probe)
        return stat.f_bavail * stat.f_frsize
    import shutil

    return shutil.disk_usage(probe).free


def check_free_disk(path: str | Path, need_bytes: int, *, what: str = "the output") -> None:
    """Raise :class:`DiskSpaceError` before a long step if ``need_bytes`` will not fit."""
    free = free_bytes(path)
    if free < need_bytes + DISK_MARGIN:
        raise DiskSpaceError(
            f"not enough free disk for {what}: need {human_bytes(need_bytes)} plus a "
            f"{human_bytes(DISK_MARGIN)} margin, {human_bytes(free)} free at "
            f"{Path(path).absolute().parent}",
            hint="free some space or write the output elsewhere (-o / --outdir)",
        )


DISK_MARGIN = 16 * 1024 * 1024  # kept free beyond an output's own size


def available_memory() -> int:
    """Available RAM in bytes; ``GGUFKIT_FAKE_AVAILABLE_MEMORY`` overrides it for tests."""
    fake = os.environ.get("GGUFKIT_FAKE_AVAILABLE_MEMORY")
    if fake:
        return int(fake)
    import psutil

    return int(psutil.virtual_memory().available)


def check_free_memory(need_bytes: int, *, what: str) -> None:
    """Raise :class:`MemoryShortageError` before a step whose rough RAM need will not fit."""
    available = available_memory()
    if available < need_bytes:
        raise MemoryShortageError(
            f"not enough memory for {what}: about {human_bytes(need_bytes)} needed, "
            f"{human_bytes(available)} available",
            hint="close other programs, or use a machine with more RAM",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def sha256_file(path: str | Path, chunk: int = 4 * 1024 * 1024) -> str:
    import hashlib  # here: quantize and other quick commands never hash

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    return digest.hexdigest()
