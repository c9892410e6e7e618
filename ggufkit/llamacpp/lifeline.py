"""A tool started by ggufkit dies with ggufkit, even when ggufkit is killed with SIGKILL.

A llama.cpp binary cannot watch its parent, and nothing runs in a process killed with SIGKILL,
so the tie is made outside both. On POSIX the tool gets its own process group (a new session) and
a small watcher process (``python -S``) holds the read end of a pipe whose write end only ggufkit
has: when ggufkit ends the tool normally it writes one byte and the watcher leaves; when ggufkit
dies the pipe reaches end-of-file and the watcher kills the tool's process group. On Windows the
tool joins a job object with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: the job's last handle closes
with ggufkit, and the system kills the job. Ctrl-C reaches ggufkit, which stops the tool itself
(:meth:`Lifeline.kill`: the whole process group, or the job).

A tool whose start-up must stay cheap (``llama-quantize``) is tied without a watcher process where
the system can do it alone: on Linux the kernel sends the tool SIGKILL when ggufkit dies
(``PR_SET_PDEATHSIG``, set in the child before it runs the tool); on Windows the job object needs
no process either. macOS has neither, so the watcher ties it there too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

_WATCHER = """
import os, signal, sys
if not os.read(0, 1):
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except OSError:
        pass
"""


def popen_options(*, watcher: bool = True) -> dict[str, Any]:
    """The ``subprocess.Popen`` options a tool needs for :class:`Lifeline` (the same
    ``watcher``)."""
    if os.name != "posix":
        return {}
    tie = None if watcher else _parent_death_signal()
    return {"start_new_session": True, **({"preexec_fn": tie} if tie is not None else {})}


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a function for the child, between fork and exec, that asks the kernel for SIGKILL
    when this process ends (and leaves at once if it already has). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def tie() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # ggufkit died before the tie was made
            os._exit(1)

    return tie


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Lifeline:
    """``Lifeline(process)`` right after starting it; ``release()`` once it has ended.

    ``watcher=False`` (the process started with ``popen_options(watcher=False)``): no watcher
    process where the system ties the tool alone (Linux, Windows)."""

    def __init__(self, process: subprocess.Popen[Any], *, watcher: bool = True) -> None:
        self._process = process
        self._watcher: subprocess.Popen[bytes] | None = None
        self._job: Any = None
        kernel_tied = not watcher and sys.platform.startswith("linux")
        if os.name == "posix" and not kernel_tied:
            self._watcher = subprocess.Popen(
                [sys.executable, "-S", "-c", _WATCHER, str(process.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is not for it
            )
        elif os.name == "nt":  # pragma: no cover - Windows
            self._job = _kill_on_close_job(process)

    def kill(self) -> None:
        """Stop the tool now, and whatever it started: its process group (POSIX: the tool leads
        a session of its own), its job (Windows)."""
        if os.name == "posix":
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
                return
            except (ProcessLookupError, PermissionError):
                pass  # already reaped, or not a group leader
        elif self._job is not None and _kernel32().TerminateJobObject(self._job, 1):
            return  # pragma: no cover - Windows
        with contextlib.suppress(OSError):
            self._process.kill()

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
            _kernel32().CloseHandle(job)


def declare_prototypes(kernel32: Any) -> Any:
    """Give the job-object functions of ``kernel32`` their C prototypes: without ``restype`` a
    64-bit HANDLE comes back as a truncated 32-bit int, and without ``argtypes`` a handle is
    passed as one."""
    from ctypes import c_int, wintypes

    handle, boolean = wintypes.HANDLE, wintypes.BOOL
    prototypes: dict[str, tuple[list[Any], Any]] = {
        "CreateJobObjectW": ([wintypes.LPVOID, wintypes.LPCWSTR], handle),
        # (job, JOBOBJECTINFOCLASS, the information, its size)
        "SetInformationJobObject": ([handle, c_int, wintypes.LPVOID, wintypes.DWORD], boolean),
        "AssignProcessToJobObject": ([handle, handle], boolean),
        "TerminateJobObject": ([handle, wintypes.UINT], boolean),
        "CloseHandle": ([handle], boolean),
    }
    for name, (argtypes, restype) in prototypes.items():
        function = getattr(kernel32, name)
        function.argtypes, function.restype = argtypes, restype
    return kernel32


_declared: list[Any] = []


def _kernel32() -> Any:  # pragma: no cover - Windows
    """kernel32 with the job-object prototypes declared (once)."""
    if not _declared:
        import ctypes

        # A private WinDLL: the prototypes stay off the shared ctypes.windll.kernel32.
        _declared.append(declare_prototypes(ctypes.WinDLL("kernel32", use_last_error=True)))  # type: ignore[attr-defined]
    return _declared[0]


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

    kernel32 = _kernel32()
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
    if handle is None or not kernel32.AssignProcessToJobObject(job, handle):
        kernel32.CloseHandle(job)
        return None
    return job
