"""The root group: wiring, version, and the one place errors become messages and exit codes."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ggufkit import __version__
from ggufkit.cli import COMMANDS, cli
from ggufkit.core.errors import (
    BuildError,
    InputError,
    ToolFailedError,
    UsageError,
    exit_code_for,
    format_error,
)


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_wired_command_has_help_with_examples(name: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["--help"])
    assert listed.exit_code == 0
    assert any(line.split()[:1] == [name] for line in listed.output.splitlines()), listed.output
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {name} "), result.output
    lines = result.output.splitlines()
    assert "  Examples:" in lines, f"`ggufkit {name} --help` has no example block"
    examples = lines[lines.index("  Examples:") + 1 :]
    assert any(line.strip().startswith(f"ggufkit {name}") for line in examples), result.output


def test_unknown_command_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2


def _command_raising(error: BaseException) -> click.Command:
    @click.command("boom")
    def boom() -> None:
        raise error

    return boom


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (InputError("bad file x.gguf", hint="fix it"), 1, "hint: fix it"),
        (UsageError("wrong option"), 2, "wrong option"),
        (KeyboardInterrupt(), 130, "Interrupted"),
        (RuntimeError("unexpected"), 1, "GGUFKIT_DEBUG=1"),
    ],
)
def test_errors_map_to_messages_and_exit_codes(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, code: int, text: str
) -> None:
    monkeypatch.setitem(COMMANDS, "boom", "doctor")
    monkeypatch.setattr("ggufkit.cli.doctor.command", _command_raising(error))
    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code == code
    assert text in result.output
    assert "Traceback" not in result.output


def test_debug_env_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_DEBUG", "1")
    monkeypatch.setitem(COMMANDS, "boom", "doctor")
    monkeypatch.setattr("ggufkit.cli.doctor.command", _command_raising(RuntimeError("unexpected")))
    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)


def test_tool_failure_message_carries_tail_and_log() -> None:
    text = format_error(
        ToolFailedError("llama-quantize failed", tail="line a\nline b", log_path="/tmp/x.log")
    )
    assert "line b" in text and "/tmp/x.log" in text
    # A build's failure (no tool failure since issue 31, but the same kind of error) shows its
    # tail and log the same way, with the same exit code.
    build = BuildError("cmake failed", tail="cmake said", log_path="/tmp/b.log")
    assert "cmake said" in format_error(build) and "/tmp/b.log" in format_error(build)
    assert exit_code_for(build) == exit_code_for(ToolFailedError("x")) == 1
