"""Settings that travel to child processes as environment variables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scoped_env(name: str, value: str | None) -> Iterator[None]:
    """``name=value`` for everything inside, children started meanwhile included; the previous
    value (or its absence) afterwards. ``None`` changes nothing."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def positive_number(name: str, default: float) -> float:
    """A positive number from the environment variable ``name``; ``default`` when unset."""
    from ggufkit.core.errors import UsageError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:  # NaN too
        raise UsageError(f"{name}={value!r} is not a positive number", hint=f"unset {name}")
    return number
