"""Options shared by several commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
    )(func)


def threads_option(func: F) -> F:
    return click.option(
        "--threads",
        "-t",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads (default: all cores).",
    )(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
