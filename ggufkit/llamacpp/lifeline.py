"""A tool started by ggufkit dies with ggufkit, even when ggufkit is killed with SIGKILL.

A llama.cpp binary cannot watch its parent, and nothing runs in a process killed with SIGKILL,
so the tie is made outside both. On POSIX the tool gets its own process group (a new session) and
a small watcher process (``python -S``) holds the read end of a pipe whose write end only ggufkit
has: when ggufkit ends the tool normally it writes one byte and the watcher leaves; when ggufkit
dies the pipe reaches end-of-file and the watcher kills the tool's process group. On Windows the
tool joins a job object with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: the job's last handle closes
with ggufkit, and the system kills the job. Ctrl-C reaches ggufkit, which stops the tool itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

_WATCHER = """
import os, signal, sys
if not os.read(0, 1):
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except OSError:
        pass
"""


def popen_options() -> dict[str, Any]:
    """The ``subprocess.Popen`` options a tool needs for :class:`Lifeline`."""
    return {"start_new_session": True} if os.name == "posix" else {}


class Lifeline:
    """``Lifeline(process)`` right after starting it; ``release()`` once it has ended."""

    def __init__(self, process: subprocess.Popen[Any]) -> None:
        self._watcher: subprocess.Popen[bytes] | None = None
        self._job: Any = None
        if os.name == "posix":
            self._watcher = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHER, str(process.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is not for it
            )
        elif os.name == "nt":  # pragma: no cover - Windows
            self._job = _kill_on_close_job(process)

    def release(self) -> None:
        """The tool has ended: the watcher leaves without killing anything."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.stdin is not None:
            with contextlib.suppress(OSError):
                watcher.stdin.write(b"x")
                watcher.stdin.close()
            try:
                watcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()
        job, self._job = self._job, None
        if job is not None:  # pragma: no cover - Windows
            import ctypes

            ctypes.windll.kernel32.CloseHandle(job)  # type: ignore[attr-defined]


def _kill_on_close_job(process: subprocess.Popen[Any]) -> Any:  # pragma: no cover - Windows
    """A job object holding ``process`` that the system kills when its last handle closes."""
    import ctypes
    from ctypes import wintypes

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_ulonglong) for name in (
            "read_ops", "write_ops", "other_ops", "read_bytes", "write_bytes", "other_bytes")]  # fmt: skip

    class BasicLimits(ctypes.Structure):
        _fields_ = [
            ("per_process_time", ctypes.c_int64),
            ("per_job_time", ctypes.c_int64),
            ("flags", wintypes.DWORD),
            ("min_working_set", ctypes.c_size_t),
            ("max_working_set", ctypes.c_size_t),
            ("active_processes", wintypes.DWORD),
            ("affinity", ctypes.c_size_t),
            ("priority", wintypes.DWORD),
            ("scheduling", wintypes.DWORD),
        ]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("basic", BasicLimits),
            ("io", IoCounters),
            ("process_memory", ctypes.c_size_t),
            ("job_memory", ctypes.c_size_t),
            ("peak_process_memory", ctypes.c_size_t),
            ("peak_job_memory", ctypes.c_size_t),
        ]

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return None
    limits = ExtendedLimits()
    limits.basic.flags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    extended_information = 9  # JobObjectExtendedLimitInformation
    kernel32.SetInformationJobObject(
        job, extended_information, ctypes.byref(limits), ctypes.sizeof(limits)
    )
    handle = getattr(process, "_handle", None)
    if handle is None or not kernel32.AssignProcessToJobObject(job, int(handle)):
        kernel32.CloseHandle(job)
        return None
    return job
