"""Writing tensors in row blocks on several threads: what the GGUF writer and the sharded
safetensors writer share.

Every tensor's place in its file is known before any data is made, so worker threads compute row
blocks and write each at its offset, in any order. ``BlockPipeline`` keeps a few tensors' blocks
queued (no idle worker at a tensor's end) and hands each tensor's results back in order, once all
its blocks are done; ``PositionedWriter`` makes the writes.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

BLOCK_BYTES = 4 * 1024 * 1024  # bytes per row block: big writes, buffers within the caches

Item = TypeVar("Item")
Result = TypeVar("Result")


def row_blocks(
    rows: int, row_bytes: int, block_bytes: int | None = None
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``block_bytes`` (default ``BLOCK_BYTES``) each."""
    if row_bytes <= 0:  # no data (a zero dim): one block, however many rows a header claims
        yield from [(0, rows)] if rows > 0 else []
        return
    step = max(1, (block_bytes or BLOCK_BYTES) // row_bytes)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class PositionedWriter:
    """Positioned writes to one file from several threads, one at a time: the kernel takes the
    file's lock for each buffered write anyway, and a waiting thread spins there (measured: a
    tenth of the CPU time of a 2-thread convert), where here it sleeps. Platforms without
    ``pwrite`` (Windows) seek and write under the same lock."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def write_at(self, data: Any, offset: int) -> None:
        view = memoryview(data).cast("B")
        with self._lock:
            while view:
                if hasattr(os, "pwrite"):
                    written = os.pwrite(self.fd, view, offset)
                else:
                    os.lseek(self.fd, offset, os.SEEK_SET)
                    written = os.write(self.fd, view)
                view = view[written:]
                offset += written

    def write_array(self, data: np.ndarray, offset: int) -> None:
        """An array's bytes, little-endian (a copy only of a non-contiguous or big-endian one)."""
        little = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        self.write_at(little.reshape(-1).view(np.uint8), offset)


class BlockPipeline(Generic[Item, Result]):
    """Block tasks of one item (a tensor) after another on ``threads`` workers, with at most
    ``window`` items in flight; ``done(item, results)`` runs in the caller's thread, in order,
    once all of an item's blocks are finished. Use as a context manager: leaving it by an error
    cancels what has not started."""

    def __init__(
        self, threads: int, window: int, done: Callable[[Item, list[Result]], None], name: str
    ) -> None:
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix=name)
        self._window = max(1, window)
        self._done = done
        self._pending: collections.deque[tuple[Item, list[Future[Result]]]] = collections.deque()

    def add(self, item: Item, tasks: Sequence[Callable[[], Result]]) -> None:
        self._pending.append((item, [self._pool.submit(task) for task in tasks]))
        while len(self._pending) >= self._window:
            self._settle()

    def finish(self) -> None:
        while self._pending:
            self._settle()

    def _settle(self) -> None:
        item, futures = self._pending.popleft()
        self._done(item, [future.result() for future in futures])

    def __enter__(self) -> BlockPipeline[Item, Result]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
