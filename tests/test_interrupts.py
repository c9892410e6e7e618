"""Killed, interrupted and concurrent runs: nothing half-written under a final name, and the next run works.

Each long command runs in a subprocess on a model large enough (~200 MB) that it is caught
mid-write: SIGKILL leaves at most the `.partial` (which the next run removes), SIGINT exits 130
with a message and removes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tiny

from ggufkit.core.fsutil import partials

pytestmark = [pytest.mark.slow, pytest.mark.needs_torch, pytest.mark.posix_only]


@pytest.fixture(scope="module")
def medium_llama(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    return tiny.make_llama(
        tmp_path_factory.mktemp("medium"),
        hidden=1024,
        layers=4,
        heads=8,
        intermediate=2816,
        spm_model=spm_model,
    )


@pytest.fixture(scope="module")
def medium_delta(
    tmp_path_factory: pytest.TempPathFactory, spm_model: Path, medium_llama: Path
) -> Path:
    # A second random model of the same shape stands in for the delta.
    return tiny.make_llama(
        tmp_path_factory.mktemp("medium-delta"),
        hidden=1024,
        layers=4,
        heads=8,
        intermediate=2816,
        spm_model=spm_model,
        seed=7,
    )


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "GGUFKIT_NO_PROGRESS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ggufkit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _out, err = process.communicate()
            pytest.fail(
                f"finished before it could be interrupted (exit {process.returncode}): {err[-2000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the temporary output never appeared")
        time.sleep(0.005)


def _has_bytes(final: Path) -> Callable[[], bool]:
    """Whether a temporary output of ``final`` (NAME.<pid>.<random>.partial) holds data yet."""

    def check() -> bool:
        try:
            for path in partials(final):
                if path.is_dir() and any(p.stat().st_size > 0 for p in path.iterdir()):
                    return True
                if path.is_file() and path.stat().st_size > 0:
                    return True
        except OSError:
            pass
        return False

    return check


def _kill_then_rerun(args: list[str], final: Path) -> None:
    process = _start(args)
    _wait_for(_has_bytes(final), process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not final.exists(), "a killed run left a file under the final name"
    assert partials(final), "the killed run's temporary output should still be there"
    rerun = _start(args)
    _out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert final.exists()
    assert not partials(final), "the next run starts clean: the killed run's leftovers are gone"


def _interrupt(args: list[str], final: Path) -> None:
    process = _start(args)
    _wait_for(_has_bytes(final), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Interrupted" in err
    assert "Traceback" not in err
    assert not final.exists()
    assert not partials(final)


def test_convert_killed_and_interrupted(tmp_path: Path, medium_llama: Path) -> None:
    out = tmp_path / "m.gguf"
    args = ["convert", str(medium_llama), "-o", str(out), "--outtype", "f32", "--threads", "1"]
    _interrupt(args, out)
    _kill_then_rerun(args, out)


def test_merge_delta_killed_and_interrupted(
    tmp_path: Path, medium_llama: Path, medium_delta: Path
) -> None:
    out = tmp_path / "merged"
    args = [
        "merge-delta",
        "--base",
        str(medium_llama),
        "--delta",
        str(medium_delta),
        "-o",
        str(out),
        "--dtype",
        "f32",
    ]
    _interrupt(args, out)
    _kill_then_rerun(args, out)


@pytest.mark.needs_llamacpp
def test_quantize_killed_and_interrupted(tmp_path: Path, medium_llama: Path) -> None:
    f32 = tmp_path / "m-f32.gguf"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ggufkit",
            "convert",
            str(medium_llama),
            "-o",
            str(f32),
            "--outtype",
            "f32",
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "m-q8.gguf"
    args = ["quantize", str(f32), "q8_0", "-o", str(out), "--threads", "1"]
    _interrupt(args, out)
    _kill_then_rerun(args, out)


def test_two_processes_on_one_workspace(tmp_path: Path, medium_llama: Path) -> None:
    """While one `ggufkit convert` holds the workspace, a second is refused, and nothing is corrupted."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = {**os.environ, "GGUFKIT_NO_PROGRESS": "1"}

    def ggufkit(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ggufkit", *args],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    init = ggufkit("init", str(medium_llama), "--name", "m", "--outtype", "f32")
    assert init.wait(timeout=120) == 0
    first = ggufkit("convert")
    final = workspace / "out" / "m-F32.gguf"
    _wait_for(_has_bytes(final), first)
    second = ggufkit("convert")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1
    assert "in use by another ggufkit process" in err
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    again = ggufkit("convert")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "up to date" in err
