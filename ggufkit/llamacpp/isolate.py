"""Run in-process llama.cpp work in a spawned child, so that a crash there is an error here.

llama.cpp code that crashes (a CPU kernel that faults, a malformed file) would take the whole
Python process down: a test run, a demo, a batch. :func:`run_isolated` calls a module-level
function in a child started with ``spawn`` (never ``fork``: Windows lacks it, and a fork after
torch has started threads can deadlock), passes its result or exception back, and turns a death
by signal into a :class:`ToolCrashedError` that names the signal.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ggufkit.core.errors import EvaluationError, GGUFKitError
from ggufkit.llamacpp.crash import crash_error, signal_of

T = TypeVar("T")

_EVENT, _RESULT, _ERROR = "event", "result", "error"
_NEED, _ITEM, _END = "need", "item", "end"


def _pull(conn: Connection) -> Iterator[Any]:
    """In the child: the parent's iterable, one item asked for at a time."""
    while True:
        conn.send((_NEED, None))
        kind, item = conn.recv()
        if kind == _END:
            return
        yield item


def _child_main(
    conn: Connection,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    event_kwarg: str | None,
    feed_kwarg: str | None,
) -> None:
    try:
        if event_kwarg is not None:
            kwargs = {**kwargs, event_kwarg: lambda payload: conn.send((_EVENT, payload))}
        if feed_kwarg is not None:
            kwargs = {**kwargs, feed_kwarg: _pull(conn)}
        conn.send((_RESULT, func(*args, **kwargs)))
    except BaseException as exc:  # everything goes back to the parent, which decides
        try:
            conn.send((_ERROR, exc))
        except Exception:  # an exception that does not pickle: send its text instead
            conn.send((_ERROR, EvaluationError(f"{type(exc).__name__}: {exc}")))
        if not isinstance(exc, GGUFKitError | KeyboardInterrupt) and _debug():
            traceback.print_exc()  # the parent reports the error; the trace only when asked
    finally:
        conn.close()


def _debug() -> bool:
    return os.environ.get("GGUFKIT_DEBUG", "") not in ("", "0")


def run_isolated(
    func: Callable[..., T],
    *args: Any,
    what: str,
    hint: str | None = None,
    on_event: Callable[[Any], None] | None = None,
    event_kwarg: str | None = None,
    feed: Iterable[Any] | None = None,
    feed_kwarg: str | None = None,
    **kwargs: Any,
) -> T:
    """``func(*args, **kwargs)`` in a spawned child; its result, or its exception re-raised here.

    ``func`` must be importable by name (a module-level function) and its arguments picklable.
    With ``event_kwarg``, the child passes a callback under that name; what the child sends
    through it reaches ``on_event`` here as it happens (e.g. generated text). With
    ``feed_kwarg``, the child gets an iterator under that name that takes the items of ``feed``
    from here one at a time, when it asks (e.g. a conversation's turns typed at a prompt).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=True)
    items = iter(feed) if feed is not None and feed_kwarg is not None else None
    process = context.Process(
        target=_child_main,
        args=(
            sender,
            func,
            args,
            kwargs,
            event_kwarg if on_event is not None else None,
            feed_kwarg if items is not None else None,
        ),
        daemon=True,
    )
    process.start()
    sender.close()  # so that the child's death ends recv() with EOFError
    outcome: tuple[str, Any] | None = None
    try:
        while outcome is None:
            try:
                kind, payload = receiver.recv()
            except EOFError:
                break
            if kind == _EVENT:
                if on_event is not None:
                    on_event(payload)
            elif kind == _NEED:
                assert items is not None
                nothing = object()
                item = next(items, nothing)
                receiver.send((_END, None) if item is nothing else (_ITEM, item))
            else:
                outcome = (kind, payload)
        process.join()
    except BaseException:
        process.kill()
        process.join()
        raise
    finally:
        receiver.close()
    if outcome is not None:
        kind, payload = outcome
        if kind == _ERROR:
            raise payload
        return payload
    exitcode = process.exitcode if process.exitcode is not None else -1
    crashed = signal_of(exitcode)
    if crashed:
        raise crash_error(what, crashed, hint=hint)
    raise EvaluationError(
        f"{what} ended without a result (exit code {exitcode})",
        hint=hint or "run again with GGUFKIT_DEBUG=1 and read the output above",
    )
