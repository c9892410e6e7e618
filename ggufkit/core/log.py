"""Logging and progress on stderr; results go to stdout through click.echo."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

logger = logging.getLogger("ggufkit")

_state = {"quiet": False}


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: names from files reach the terminal as text."""

    def format(self, record: logging.LogRecord) -> str:
        from ggufkit.core.text import printable

        return printable(super().format(record), keep_lines=True)


LIBRARY_LOGGERS = ("gguf", "transformers", "huggingface_hub", "tokenizers")


def setup_logging(verbosity: int = 0) -> None:
    """verbosity: -1 quiet (warnings only, no progress), 0 info, 1+ debug."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    _state["quiet"] = verbosity < 0
    os.environ["GGUFKIT_LOG_LEVEL"] = str(level)  # for spawned children (llamacpp.bindings)
    if verbosity < 0:  # the libraries' own chatter, here and in children
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in LIBRARY_LOGGERS:  # their warnings (gguf-py's vocabulary notes) only without -q
        logging.getLogger(name).setLevel(logging.ERROR if verbosity < 0 else logging.NOTSET)
    root = logging.getLogger("ggufkit")
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _PrintableFormatter(
            "%(message)s" if verbosity < 1 else "%(levelname)s %(name)s: %(message)s"
        )
    )
    root.addHandler(handler)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("ggufkit") else f"ggufkit.{name}")


def progress_disabled() -> bool:
    return _state["quiet"] or os.environ.get("GGUFKIT_NO_PROGRESS", "") not in ("", "0")


class ProgressBar(Protocol):
    """What callers use of a progress bar (tqdm's names)."""

    n: float
    total: float | None

    def update(self, n: float = 1) -> Any: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


class _SilentBar:
    """Counts like a bar and shows nothing: no tqdm import when progress is off."""

    def __init__(self, total: float | None) -> None:
        self.n: float = 0
        self.total = total

    def update(self, n: float = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress(
    total: float | None, desc: str, unit: str = "B", **kwargs: Any
) -> Iterator[ProgressBar]:
    """A progress bar on stderr; ``GGUFKIT_NO_PROGRESS=1`` or ``-q`` turns it off."""
    if progress_disabled():
        yield _SilentBar(total)
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        **kwargs,
    )
    try:
        yield bar
    finally:
        bar.close()
