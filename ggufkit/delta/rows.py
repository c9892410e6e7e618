"""Rows of a checkpoint's tensors, read with positioned reads into per-thread buffers.

Several threads going through memory maps fault every page in and, to keep the resident memory
down, unmap it again: each unmap interrupts the other cores to flush their TLBs, which on a
virtual machine costs more than the arithmetic. A ``pread`` into a buffer the thread reuses
copies the same bytes from the page cache with neither. Files that are not safetensors (or a
platform without ``os.preadv``) are read through the checkpoint's own ``read``.
"""

from __future__ import annotations

import os
import threading
from math import prod
from pathlib import Path

import numpy as np

from ggufkit.core.errors import InputError
from ggufkit.formats.safetensors import SAFETENSORS_DTYPES, Checkpoint

_GATHER_SPAN = 2  # row indices spanning at most this many times their count are read as a range


class RowReader:
    """Rows ``start:stop`` of one checkpoint's tensors; an array returned by :meth:`rows` is a
    view of this thread's buffer, valid until the thread's next call."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.checkpoint.info(name).shape) or (1,)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.checkpoint.info(name)
        shape = self.shape(name)
        if info.file.suffix != ".safetensors" or not hasattr(os, "preadv"):
            return self.checkpoint.read(name).reshape(shape)[start:stop]
        np_dtype, itemsize = SAFETENSORS_DTYPES[info.dtype]
        row_bytes = prod(shape[1:]) * itemsize
        n_bytes = max(0, stop - start) * row_bytes
        buffer = self._buffer(n_bytes)
        view, position = memoryview(buffer)[:n_bytes], info.offset + start * row_bytes
        while view:
            done = os.preadv(self._fd(info.file), [view], position)
            if done <= 0:
                raise InputError(
                    f"{info.file} ended while reading tensor {name!r}",
                    hint="the file is truncated or was changed while being read: fetch it again",
                    path=info.file,
                )
            view, position = view[done:], position + done
        array = np.frombuffer(buffer, dtype=np_dtype, count=n_bytes // itemsize)
        return array.reshape((max(0, stop - start), *shape[1:]))

    def gather(self, name: str, indices: np.ndarray) -> np.ndarray:
        """The rows at ``indices``, as a new array."""
        if indices.size == 0:
            return self.rows(name, 0, 0).copy()
        low, high = int(indices.min()), int(indices.max()) + 1
        if high - low <= _GATHER_SPAN * indices.size:  # e.g. rotary reordering within heads
            return self.rows(name, low, high)[indices - low]
        return self.checkpoint.read(name).reshape(self.shape(name))[indices]

    def _buffer(self, n_bytes: int) -> bytearray:
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < n_bytes:
            buffer = bytearray(n_bytes)
            self._local.buffer = buffer
        return buffer

    def _fd(self, file: Path) -> int:
        fd = self._fds.get(file)
        if fd is None:
            with self._lock:
                fd = self._fds.get(file)
                if fd is None:
                    fd = self._fds[file] = os.open(file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
