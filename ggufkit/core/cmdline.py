"""Recorded command lines, rendered from the click command's own parameters.

A manifest records, for each output, the ``ggufkit`` command that makes it again. Such a line is
never spelled by hand: :func:`command_line` takes the command's parameter values (Python names, as
click passes them) and renders every argument in order, then each option whose value differs from
its default under its canonical name (the first long one), quoted with :func:`shlex.join` where it
is shown as one string. :func:`from_context` does the same for the command that is running.

The click commands live in ``ggufkit.cli``, above every package that records a step; they are
looked up through the running click context's root group, else by importing ``ggufkit.cli`` by
name: the command line's spelling is the CLI's to define, and this module only reads it.
"""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import click

PROG = "ggufkit"
# Parameters whose callback consumes the value (expose_value=False) keep it here, by name.
META_KEY = "ggufkit.params"
# Options that never change what a command writes and are not recorded.
NOT_RECORDED = frozenset({"as_json"})


def remember(ctx: click.Context, name: str, value: Any) -> None:
    """Keep a consumed option's value (``expose_value=False``) so that it is rendered too."""
    ctx.meta.setdefault(META_KEY, {})[name] = value


def from_context(ctx: click.Context | None = None, **overrides: Any) -> list[str]:
    """The running command as ``["ggufkit", NAME, ...]``; ``overrides`` replace parsed values
    (e.g. a model found in the workspace in place of the MODEL left out)."""
    ctx = ctx or click.get_current_context()
    values = {**ctx.meta.get(META_KEY, {}), **ctx.params, **overrides}
    assert ctx.info_name is not None
    return render(ctx.command, ctx.info_name, values)


def command_line(name: str, /, **values: Any) -> list[str]:
    """``ggufkit NAME ...`` for these parameter values (Python names; the rest at defaults)."""
    return render(_find_command(name), name, values)


def shown(argv: Sequence[str]) -> str:
    """One string a shell reads back as ``argv``."""
    return shlex.join(argv)


def render(command: click.Command, name: str, values: Mapping[str, Any]) -> list[str]:
    unknown = set(values) - {p.name for p in command.params}
    if unknown:
        raise ValueError(f"`ggufkit {name}` has no parameter {sorted(unknown)}")
    argv = [PROG, name]
    options: list[str] = []
    for param in command.params:
        if param.name is None or param.name not in values or param.name in NOT_RECORDED:
            continue
        value = values[param.name]
        if isinstance(param, click.Argument):
            argv += [_text(v) for v in _many(value)]
        elif isinstance(param, click.Option) and not param.hidden:
            options += _option(command, param, value)
    return argv + options


def _option(command: click.Command, param: click.Option, value: Any) -> list[str]:
    default = param.get_default(click.Context(command), call=True)
    if value is None or value == default or (param.multiple and not value and not default):
        return []
    names = [o for o in param.opts if o.startswith("--")] or param.opts
    if param.is_flag and not param.count:
        if param.secondary_opts:
            return [names[0] if value else param.secondary_opts[0]]
        return [names[0]] if value else []
    if param.count:
        return [names[0]] * int(value)
    return [part for v in _many(value) for part in (names[0], _text(v))]


def _many(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _text(value: Any) -> str:
    if isinstance(value, PurePath):
        return value.as_posix() if not value.is_absolute() else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _find_command(name: str) -> click.Command:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().command if ctx is not None else None
    if not isinstance(root, click.Group) or root.name != "cli":
        root = importlib.import_module("ggufkit.cli").cli
    assert isinstance(root, click.Group)
    command = root.get_command(click.Context(root), name)
    if command is None:
        raise ValueError(f"no ggufkit command {name!r}")
    return command
