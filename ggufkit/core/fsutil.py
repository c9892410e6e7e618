"""Atomic outputs, free-space checks, hashing and locks: the file-system rules every command obeys.

An output is written under a temporary name in its final directory and renamed only when complete,
so a crash or Ctrl-C never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
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
    WorkspaceError,
)

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    """The temporary name an output is written under before it is renamed to ``final``."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def check_output_path(final: Path, *, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that is a directory or one of the inputs."""
    final = Path(final)
    if final.is_dir():
        raise UsageError(
            f"output path {final} is a directory",
            hint="give a file name, e.g. -o " + str(final / "model.gguf"),
        )
    for source in inputs:
        if source.exists() and final.exists() and final.resolve() == Path(source).resolve():
            raise UsageError(
                f"output {final} is the same file as the input", hint="choose another -o"
            )
    return final


@contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success, remove it on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_output` for a directory (``final.partial``); an existing ``final`` is
    replaced only on success, and a ``.partial`` left by a killed run is removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(final: str | Path, text: str) -> Path:
    final = Path(final)
    with atomic_output(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return final


def write_json_atomic(final: str | Path, data: Any) -> Path:
    return write_text_atomic(final, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


_RAISE: Any = object()


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
    value to use instead."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        if missing is not _RAISE:
            return missing
        raise error(f"{path} is missing", hint=missing_hint or hint, path=path) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path} is not valid JSON: {exc}", hint=hint, path=path) from exc


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
    return shutil.disk_usage(probe).free


def check_free_disk(path: str | Path, need_bytes: int, *, what: str = "the output") -> None:
    """Raise :class:`DiskSpaceError` before a long step if ``need_bytes`` will not fit."""
    free = free_bytes(path)
    margin = 16 * 1024 * 1024
    if free < need_bytes + margin:
        raise DiskSpaceError(
            f"not enough free disk for {what}: need {human_bytes(need_bytes)}, "
            f"{human_bytes(free)} free at {Path(path).absolute().parent}",
            hint="free some space or write the output elsewhere (-o / --outdir)",
        )


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


@contextmanager
def locked(lock_path: str | Path, *, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process file lock; ``timeout`` < 0 waits forever."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock, Timeout  # here: its import costs a quantize run ~15 ms

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise WorkspaceError(
            f"{what} is in use by another ggufkit process (lock {lock_path})",
            hint="wait for it to finish, or remove the lock file if no ggufkit is running",
        ) from exc
    try:
        yield
    finally:
        lock.release()
