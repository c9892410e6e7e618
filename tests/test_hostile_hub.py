"""Hostile inputs, the guards on the network (issue 26): a Hub that accepts connections and never
answers fails ``download`` and ``upload``/``publish`` after GGUFKIT_HUB_TIMEOUT, with a hint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hubserver import FakeHub, serving

from ggufkit.cli import cli

# Far above the 1 s timeout the tests set: only a call that never times out gets here.
HANG_GUARD_SECONDS = 120


@pytest.fixture
def stalled_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    with serving(monkeypatch, tmp_path / "hf-home") as server:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("GGUFKIT_HUB_TIMEOUT", "1")
        server.add_repo("acme/tiny", {"main": {"config.json": b"{}"}})
        server.stall()
        yield server


def _invoke_guarded(args: list[str]) -> Result:
    """The CLI run in a thread, so that a call that hangs fails the test instead of the run."""
    results: list[Result] = []
    worker = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(cli, args)), daemon=True
    )
    worker.start()
    worker.join(HANG_GUARD_SECONDS)
    assert not worker.is_alive(), f"`ggufkit {' '.join(args)}` hung on a Hub that never answers"
    return results[0]


def _check(result: Result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "GGUFKIT_HUB_TIMEOUT" in result.output and "Traceback" not in result.output
    assert all(word in result.output for word in words), result.output


def test_download_fails_on_a_hub_that_never_answers(stalled_hub: FakeHub, tmp_path: Path) -> None:
    result = _invoke_guarded(["download", "acme/tiny", "--local-dir", str(tmp_path / "m")])
    _check(result, "did not answer")


def test_upload_fails_on_a_hub_that_never_answers(stalled_hub: FakeHub, tmp_path: Path) -> None:
    model = tmp_path / "tiny-Q4_0.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    result = _invoke_guarded(["upload", "me/x", str(model), "--token", "hf_" + "x" * 30])
    _check(result, "did not answer", "uploading to me/x@main")


def test_the_timeout_must_be_a_positive_number(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggufkit.core.errors import UsageError
    from ggufkit.hub import timeouts

    monkeypatch.setenv("GGUFKIT_HUB_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="GGUFKIT_HUB_TIMEOUT"):
        timeouts.seconds()
    monkeypatch.setenv("GGUFKIT_HUB_TIMEOUT", "2.5")
    assert timeouts.seconds() == 2.5
