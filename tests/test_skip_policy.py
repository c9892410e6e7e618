"""conftest.py's rule: a skip fails the run unless GGUFKIT_ALLOW_MISSING names the missing extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = """
import pytest

def test_runs():
    pass

def test_needs_bnb():
    pytest.skip("missing extra bnb: bitsandbytes is not installed")

def test_needs_torch_module():
    pytest.skip("missing extra torch: torch.no_such_module_here is not installed")

def test_import_failure_skip():
    # how pytest's import-or-skip helper words it: it names no extra, so it never passes quietly
    pytest.skip("could not import 'torch.no_such_module_here': No module named 'torch.no'")

def test_skips_for_no_extra():
    pytest.skip("the author felt like it")
"""


def run_sample(tmp_path: Path, allow: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "GGUFKIT_ALLOW_MISSING"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if allow is not None:
        env["GGUFKIT_ALLOW_MISSING"] = allow
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-ra",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip


def closing_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("allow", [None, ""])
def test_every_skip_fails_without_an_allowance(tmp_path: Path, allow: str | None) -> None:
    result = run_sample(tmp_path, allow)
    assert result.returncode == 1, result.stdout
    assert "4 failed, 1 passed" in closing_line(result), result.stdout
    assert "GGUFKIT_ALLOW_MISSING=bnb" in result.stdout
    assert "GGUFKIT_ALLOW_MISSING=torch" in result.stdout


def test_allowed_extras_skip_and_say_why(tmp_path: Path) -> None:
    result = run_sample(tmp_path, "torch,bnb")
    assert "2 failed, 1 passed, 2 skipped" in closing_line(result), result.stdout
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 2 and all("allowed by GGUFKIT_ALLOW_MISSING" in s for s in skips)
    assert any("bitsandbytes is not installed" in s for s in skips)
    assert any("torch.no_such_module_here" in s for s in skips)
    # A skip that blames no extra fails even then, an import failure included.
    assert "the author felt like it" in result.stdout and result.returncode == 1
    assert "could not import 'torch.no_such_module_here'" in result.stdout


def test_unknown_extra_is_a_usage_error(tmp_path: Path) -> None:
    result = run_sample(tmp_path, "torch,cuda")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "unknown extras ['cuda']" in result.stdout + result.stderr
