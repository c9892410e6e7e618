"""A process that died of a signal, named in words with what to do about it.

POSIX reports a signal as a negative return code; Windows reports an NTSTATUS code instead. Both
become a :class:`ToolCrashedError` that names the signal, never "exit code -4".
"""

from __future__ import annotations

import signal
from pathlib import Path

from ggufkit.core.errors import ToolCrashedError

REBUILD_HINT = (
    "this llama.cpp build does not fit this CPU: rebuild it with `ggufkit build --force` "
    "(if it was made with --amx, without it), or use `ggufkit build --portable`"
)

# name -> (words, hint); the hint of None means "the caller's own"
_SIGNALS: dict[str, tuple[str, str | None]] = {
    "SIGILL": (
        "illegal instruction — this build uses CPU instructions this machine cannot run",
        REBUILD_HINT,
    ),
    "SIGSEGV": ("segmentation fault — it read or wrote memory it does not own", None),
    "SIGBUS": ("bus error — a bad memory access (a file changed or truncated while mapped?)", None),
    "SIGFPE": ("arithmetic exception", None),
    "SIGABRT": ("aborted — it stopped itself after an internal check failed", None),
    "SIGKILL": ("killed — often the out-of-memory killer; check free memory", None),
    "SIGTERM": ("terminated by another process", None),
    "SIGINT": ("interrupted", None),
}

# Windows exception codes, as unsigned 32-bit return codes.
_NTSTATUS: dict[int, str] = {
    0xC000001D: "SIGILL",  # STATUS_ILLEGAL_INSTRUCTION
    0xC0000005: "SIGSEGV",  # STATUS_ACCESS_VIOLATION
    0xC0000409: "SIGABRT",  # STATUS_STACK_BUFFER_OVERRUN (abort() in the CRT)
    0xC0000094: "SIGFPE",  # STATUS_INTEGER_DIVIDE_BY_ZERO
}


def signal_of(returncode: int) -> str | None:
    """The signal's name for a return code that means a crash, else None."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return _NTSTATUS.get(returncode & 0xFFFFFFFF) if returncode > 0xFFFF else None


def describe(signal_name: str) -> str:
    words = _SIGNALS.get(signal_name, ("killed by a signal", None))[0]
    return f"{signal_name} ({words})"


def crash_error(
    what: str,
    signal_name: str,
    *,
    hint: str | None = None,
    log_path: Path | None = None,
    tail: str = "",
) -> ToolCrashedError:
    """``what`` crashed with ``signal_name``: the error, with the signal's own remedy if it has one."""
    own_hint = _SIGNALS.get(signal_name, ("", None))[1]
    return ToolCrashedError(
        f"{what} crashed: {describe(signal_name)}",
        signal_name=signal_name,
        hint=own_hint or hint,
        log_path=log_path,
        tail=tail,
    )
