"""Temporary outputs (``NAME.<pid>.<host>.<random>.partial``): whose they are, when they are
stale, and the locks that guard clearing them.

A partial is someone else's until proven stale. Its writer renews a lease, the partial's mtime,
every :data:`HEARTBEAT_SECONDS` while it writes; the next run removes a partial whose lease has
expired (:data:`LEASE_SECONDS`, ``GGUFKIT_PARTIAL_LEASE``), wherever its writer ran, or one that
this machine wrote (the same host tag) for a process that is gone. A pid from another node or
container sharing the folder (Ray workers on NFS, containers on one volume) proves nothing, so
such a partial waits for its lease to expire.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ggufkit.core.errors import WorkspaceError

PARTIAL_SUFFIX = ".partial"
# <pid>.<host>.<random> between NAME. and .partial; <host> is missing in earlier versions' names
_WRITER = re.compile(r"(\d+)\.(?:([0-9a-f]{8})\.)?[0-9a-f]{8}")
# A writer renews its lease (the partial's mtime) every HEARTBEAT seconds; a partial whose lease is
# older than LEASE_SECONDS (GGUFKIT_PARTIAL_LEASE) is stale wherever its writer ran.
HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 600.0


_host_tag: str | None = None


def host_tag() -> str:
    """8 hex digits naming this machine and PID namespace: a pid means something only where the
    tag is the same (another node, or another container sharing the folder, has its own pids)."""
    global _host_tag
    if _host_tag is None:
        import socket
        import zlib

        where = socket.gethostname()
        with contextlib.suppress(OSError, AttributeError):
            where += os.readlink("/proc/self/ns/pid")  # containers: one namespace each
        _host_tag = f"{zlib.crc32(where.encode()):08x}"
    return _host_tag


def partial_path(final: Path) -> Path:
    """A temporary name beside ``final`` that is this writer's own:
    ``NAME.<pid>.<host>.<random>.partial``."""
    writer = f"{os.getpid()}.{host_tag()}.{os.urandom(4).hex()}"
    return final.with_name(f"{final.name}.{writer}{PARTIAL_SUFFIX}")


def _writer_of(final: Path, candidate: Path) -> tuple[int, str | None] | None:
    start = len(final.name) + 1
    writer = _WRITER.fullmatch(candidate.name[start : -len(PARTIAL_SUFFIX)])
    return (int(writer.group(1)), writer.group(2)) if writer else None


def partials(final: Path) -> dict[Path, int | None]:
    """Every temporary output of ``final`` there is, with its writer's pid (None: the plain
    ``NAME.partial`` of earlier ggufkit versions)."""
    found: dict[Path, int | None] = {}
    legacy = final.with_name(final.name + PARTIAL_SUFFIX)
    if legacy.exists() or legacy.is_symlink():
        found[legacy] = None
    for candidate in sorted(final.parent.glob(f"{glob.escape(final.name)}.*{PARTIAL_SUFFIX}")):
        writer = _writer_of(final, candidate)
        if writer:
            found[candidate] = writer[0]
    return found


def lease_seconds() -> float:
    from ggufkit.core.env import positive_number

    return positive_number("GGUFKIT_PARTIAL_LEASE", LEASE_SECONDS)


def stale_partials(final: Path) -> list[Path]:
    """The temporary outputs of ``final`` whose writer is gone; a live writer's file is never
    among them, on this machine or another sharing the folder.

    A partial is someone else's until proven stale: its lease (mtime, renewed by the writer every
    :data:`HEARTBEAT_SECONDS`) has expired, or it was written here (same host tag) by a process
    that no longer exists. A pid from another machine or container proves nothing.
    """
    found = partials(final)
    if not found:  # the common case
        return []
    import psutil

    here = host_tag()
    # Never under three of a default writer's heartbeats, whatever this reader's lease says: a
    # run with a short GGUFKIT_PARTIAL_LEASE must not take another's live file for stale.
    expired_before = time.time() - max(lease_seconds(), 3 * HEARTBEAT_SECONDS)
    stale = []
    for path, pid in found.items():
        if pid is None:  # earlier versions' NAME.partial
            stale.append(path)
            continue
        writer = _writer_of(final, path)
        host = writer[1] if writer else None
        try:
            expired = path.lstat().st_mtime < expired_before
        except OSError:
            continue  # gone meanwhile
        if expired or ((host is None or host == here) and not psutil.pid_exists(pid)):
            stale.append(path)
    return stale


class _Heartbeat:
    """One daemon thread renewing the leases (mtimes) of this process's partials."""

    def __init__(self) -> None:
        import threading

        self.paths: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def add(self, path: Path) -> None:
        import threading

        with self.lock:
            self.paths.add(path)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="ggufkit-partial-lease", daemon=True
                )
                self.thread.start()

    def discard(self, path: Path) -> None:
        with self.lock:
            self.paths.discard(path)

    def _run(self) -> None:
        while True:
            try:
                interval = min(HEARTBEAT_SECONDS, lease_seconds() / 3)
            except Exception:  # a bad GGUFKIT_PARTIAL_LEASE must not stop the renewals
                interval = HEARTBEAT_SECONDS
            self.wake.wait(interval)
            with self.lock:
                paths = list(self.paths)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.utime(path)


_heartbeat = _Heartbeat()


def output_lock(final: Path) -> Path:
    """The lock that guards clearing ``final``'s leftovers (kept under GGUFKIT_HOME, not beside
    the output, so output folders hold only outputs)."""
    import hashlib

    from ggufkit.core import paths

    key = hashlib.sha256(str(final.absolute()).encode()).hexdigest()[:24]
    return paths.home() / "locks" / f"output-{key}.lock"


def clear_stale_partials(final: Path) -> None:
    """Remove what killed writers of ``final`` left, under the output's lock."""
    if not stale_partials(final):  # the common case needs no lock at all
        return
    with locked(output_lock(final), what=f"the output {final}"):
        for leftover in stale_partials(final):
            _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_OWNED_DIR = re.compile(r"(\d+)\.([0-9a-f]{8})-.*")  # <prefix><pid>.<host>-<random>


@contextmanager
def owned_temp_dir(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A temporary folder named for this process (``<prefix><pid>.<host>-<random>``), removed on
    exit; those of the same ``prefix`` whose process is gone (a run killed with SIGKILL) are
    removed first, on this machine only."""
    import shutil
    import tempfile

    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    clear_dead_temp_dirs(prefix, where)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.{host_tag()}-", dir=where))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clear_dead_temp_dirs(prefix: str, parent: Path) -> list[Path]:
    """Remove the :func:`owned_temp_dir` folders of ``prefix`` in ``parent`` whose process is gone
    (or is another process under a reused pid: started after the folder last changed)."""
    import shutil

    import psutil

    here, removed = host_tag(), []
    for folder in parent.glob(f"{glob.escape(prefix)}*"):
        owner = _OWNED_DIR.fullmatch(folder.name[len(prefix) :])
        if owner is None or owner.group(2) != here or not folder.is_dir():
            continue
        try:
            changed = folder.stat().st_mtime
            alive = psutil.Process(int(owner.group(1))).create_time() <= changed + 1
        except psutil.Error:
            alive = False
        except OSError:
            continue
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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
