"""One way to say each thing: every command's options walked, clashes fail (docs/options.md)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ggufkit.cli import COMMANDS, cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "options.md"

# The one deliberate difference, and why: `run` samples, so no seed means a new one each run.
SAME_NAME_OTHER_DEFAULT = {("run", "--seed")}


def commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    found = {name: cli.get_command(ctx, name) for name in COMMANDS}
    return {name: command for name, command in found.items() if command is not None}


def visible_options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def long_name(option: click.Option) -> str:
    return next(o for o in option.opts if o.startswith("--"))


def signature(command: click.Command, option: click.Option) -> tuple[object, ...]:
    """What must agree between two options of one long name: type, choices, flag, default."""
    kind = option.type
    choices = tuple(getattr(kind, "choices", ()))
    bounds = (getattr(kind, "min", None), getattr(kind, "max", None))
    default = option.get_default(click.Context(command), call=True)
    if (option.multiple and not default) or repr(default) == "Sentinel.UNSET":
        default = None
    return (
        type(kind).__name__,
        choices,
        bounds,
        option.is_flag,
        repr(default),
        *option.secondary_opts,
    )


def test_every_option_has_a_long_name() -> None:
    bare = [
        f"{name} {option.opts}"
        for name, command in commands().items()
        for option in visible_options(command)
        if not any(o.startswith("--") for o in option.opts)
    ]
    assert bare == []


def test_one_long_name_means_one_thing() -> None:
    seen: dict[str, dict[tuple[object, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, command in commands().items():
        for option in visible_options(command):
            if (name, long_name(option)) in SAME_NAME_OTHER_DEFAULT:
                continue
            seen[long_name(option)][signature(command, option)].append(name)
    clashes = {flag: dict(kinds) for flag, kinds in seen.items() if len(kinds) > 1}
    assert clashes == {}


def test_one_short_flag_stands_for_one_long_name() -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    for command in commands().values():
        for option in visible_options(command):
            for short in (o for o in option.opts if not o.startswith("--")):
                seen[short].add(long_name(option))
    assert {s: sorted(names) for s, names in seen.items() if len(names) > 1} == {}


def test_the_table_in_the_docs_lists_every_shared_option() -> None:
    """docs/options.md names every option two or more commands share, with its short flag."""
    text = DOCS.read_text(encoding="utf-8").split("## Earlier spellings")[0]
    users: dict[str, set[str]] = defaultdict(set)
    shorts: dict[str, set[str]] = defaultdict(set)
    for name, command in commands().items():
        for option in visible_options(command):
            users[long_name(option)].add(name)
            shorts[long_name(option)].update(o for o in option.opts if not o.startswith("--"))
    rows: dict[str, str] = {}
    for row in re.findall(r"^\|.*$", text, re.M):
        first = row.split("|")[1]
        rows.update({flag: row for flag in re.findall(r"--[a-z][a-z-]*", first)})
    missing = sorted(flag for flag, names in users.items() if len(names) > 1 and flag not in rows)
    assert missing == []
    for flag, row in rows.items():
        for short in shorts.get(flag, ()):
            assert f"`{short}" in row or f"{short}," in row, f"{flag}: {short} not in {row}"


def test_a_deprecated_spelling_still_works_and_warns(tmp_path: Path) -> None:
    """`verify --text` (now --corpus) is read as before, with a warning; help does not show it."""
    result = CliRunner().invoke(cli, ["verify", "--help"])
    assert "--corpus" in result.output and "--text" not in result.output
    missing = tmp_path / "nothing.gguf"
    result = CliRunner().invoke(
        cli, ["verify", str(missing), "--against", str(tmp_path), "--text", str(missing)]
    )
    assert "--text is deprecated; use --corpus" in result.output
    assert result.exit_code == 1, result.output  # the missing input, as with --corpus


@pytest.mark.parametrize("old", ["auto", "cuda"])
def test_bnb_device_reads_the_old_spellings(old: str) -> None:
    from ggufkit.cli.options import DeviceChoice

    assert DeviceChoice().convert(old, None, None) == (None if old == "auto" else "gpu")
    with pytest.raises(click.BadParameter):
        DeviceChoice().convert("tpu", None, None)
