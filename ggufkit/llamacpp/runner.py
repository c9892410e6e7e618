"""Run a llama.cpp binary (or cmake): argument lists only, output to a log file, tail on failure."""

from __future__ import annotations

import collections
import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ggufkit.core import paths
from ggufkit.core.errors import InputError, ToolFailedError
from ggufkit.core.log import get_logger
from ggufkit.llamacpp.crash import crash_error, signal_of
from ggufkit.llamacpp.lifeline import Lifeline
from ggufkit.llamacpp.lifeline import popen_options as lifeline_options

log = get_logger("llamacpp.runner")

TAIL_LINES = 15


@dataclass
class ToolResult:
    args: list[str]
    returncode: int
    stdout: str  # with merge_stderr=True: stdout and stderr interleaved
    log_path: Path
    seconds: float  # the child's lifetime: from just before spawning it to reaping it


def logs_dir() -> Path:
    path = paths.home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


_log_counter = itertools.count(1)


def new_log_path(name: str) -> Path:
    """A log name of its own: the same tool twice in one second of one process gets two files."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return logs_dir() / f"{stamp}-{os.getpid()}-{next(_log_counter)}-{Path(name).stem}.log"


def run_tool(
    args: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    hint: str | None = None,
    merge_stderr: bool = False,
    die_with_parent: bool = True,
    watcher: bool = True,
    stdin: Path | None = None,
) -> ToolResult:
    """Run ``args`` (never through a shell), streaming its diagnostics to a log and ``on_line``.

    Without ``merge_stderr`` stdout is kept apart (tools print results there) and stderr lines are
    streamed; with it both streams are one (e.g. ninja prints progress on stdout). A non-zero exit
    raises :class:`ToolFailedError` with the last lines and the log path. With
    ``die_with_parent`` (the default) the tool is killed if this process dies, SIGKILL included
    (:mod:`ggufkit.llamacpp.lifeline`: one small watcher process per tool on POSIX; with
    ``watcher=False`` none where the system ties the tool alone: Linux, Windows). When this call
    fails or is interrupted, the tool is killed with whatever it started (its process group).
    ``stdin``: a file the tool reads as its standard input (default: none, end of input at once).
    """
    argv = [str(a) for a in args]
    log_path = log_path or new_log_path(Path(argv[0]).name)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    log.debug("running %s", " ".join(argv))
    stdout_parts: list[str] = []
    with (
        open(log_path, "w", encoding="utf-8", errors="replace") as log_file,
        open(stdin, "rb") if stdin is not None else open(os.devnull, "rb") as feed,
    ):
        log_file.write("$ " + " ".join(argv) + "\n")
        log_file.flush()
        tie = lifeline_options(watcher=watcher) if die_with_parent else {}
        spawned = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            stdin=feed,
            # llama.cpp writes UTF-8 on every OS; the locale's code page (Windows) would mangle
            # "±" and non-ASCII paths.
            encoding="utf-8",
            errors="replace",
            env={**os.environ, **(env or {})},
            cwd=cwd,
            **tie,
        )
        lifeline = Lifeline(process, watcher=watcher) if die_with_parent else None
        reader = None
        if not merge_stderr:
            # stdout holds results; read it in a thread so a full pipe cannot deadlock the tool.
            def pump(stream: IO[str]) -> None:
                stdout_parts.append(stream.read())

            assert process.stdout is not None
            reader = threading.Thread(target=pump, args=(process.stdout,), daemon=True)
            reader.start()
        stream = process.stdout if merge_stderr else process.stderr
        assert stream is not None
        try:
            for line in stream:
                log_file.write(line)
                tail.append(line.rstrip("\n"))
                if merge_stderr:
                    stdout_parts.append(line)
                if on_line is not None:
                    on_line(line)
            returncode = process.wait()
            seconds = time.perf_counter() - spawned  # reaped: the rest is ours, not the tool's
            if reader is not None:
                reader.join()
        except BaseException:
            if lifeline is not None:
                lifeline.kill()  # the tool's process group (or job), not only the tool
            else:
                process.kill()
            process.wait()
            raise
        finally:
            if lifeline is not None:
                lifeline.release()
        stdout = "".join(stdout_parts)
        if stdout and not merge_stderr:
            log_file.write("--- stdout ---\n" + stdout)
    crashed = signal_of(returncode)
    if crashed:
        raise crash_error(what, crashed, hint=hint, log_path=log_path, tail="\n".join(tail))
    if returncode != 0:
        raise ToolFailedError(
            f"{what} failed (exit code {returncode})",
            hint=hint,
            log_path=log_path,
            tail="\n".join(tail),
        )
    return ToolResult(argv, returncode, stdout, log_path, seconds)


_TOO_SHORT = re.compile(r"you need at least (\d+) tokens.*?tokenizes to only (\d+) tokens", re.S)


def short_corpus_error(
    output: str, corpus: Path | None, *, tool: str, hint: str
) -> InputError | None:
    """The error for a text too short for the context, when ``output`` of a llama.cpp tool that
    reads a corpus (llama-perplexity, llama-imatrix) says so; else None."""
    short = _TOO_SHORT.search(output)
    if short is None:
        return None
    return InputError(
        f"the text {corpus} is too short: it has {short.group(2)} tokens; {tool} needs at least "
        f"{short.group(1)} for this context (2 x the context size)",
        hint=hint,
        path=corpus,
    )
