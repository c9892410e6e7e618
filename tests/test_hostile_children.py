"""Hostile inputs, the guards on processes (issue 26): a tool ggufkit starts dies with ggufkit,
SIGKILL included, and the temporary folder of a killed eval is removed by the next run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

_PARENT = """
import sys
from ggufkit.llamacpp.runner import run_tool
tool = "import os, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
run_tool([sys.executable, "-c", "import sys\\n" + tool, sys.argv[1]], what="a long tool")
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(condition: object, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.posix_only
def test_a_tool_dies_with_ggufkit_killed_by_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "tool.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(pid_file)], env=env)
    try:
        assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 120)
        tool = int(pid_file.read_text())
        assert not _gone(tool)
        parent.kill()  # SIGKILL: nothing runs in ggufkit after this
        parent.wait()
        dead = _wait_for(lambda: _gone(tool), 60)
    finally:
        parent.kill()
    if not dead:
        os.kill(tool, 9)
    assert dead, "the tool outlived ggufkit"


def test_a_killed_evals_temporary_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    from ggufkit.core.partials import host_tag, owned_temp_dir

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              check=True, capture_output=True, text=True)  # fmt: skip
    dead_pid = int(finished.stdout)
    killed = tmp_path / f"ggufkit-eval-{dead_pid}.{host_tag()}-abc123"
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "baseline.kld").write_bytes(b"x" * 1000)
    running = tmp_path / f"ggufkit-eval-{os.getppid()}.{host_tag()}-def456"  # a live run's
    running.mkdir()
    remote = tmp_path / f"ggufkit-eval-{dead_pid}.0badc0de-789abc"  # another machine's
    remote.mkdir()
    with owned_temp_dir("ggufkit-eval-", tmp_path) as work:
        assert work.name.startswith(f"ggufkit-eval-{os.getpid()}.{host_tag()}-")
        assert not killed.exists() and running.is_dir() and remote.is_dir()
    assert not work.exists()
