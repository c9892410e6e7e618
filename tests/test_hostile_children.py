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
    _assert_dies_with_its_parent(_PARENT, str(pid_file), pid_file)


def _assert_dies_with_its_parent(parent_code: str, argument: str, pid_file: Path) -> None:
    """Run ``parent_code`` (a ggufkit process starting a tool that writes its pid to
    ``pid_file``), kill it with SIGKILL, and check that the tool ends too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", parent_code, argument], env=env)
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


_QUANTIZE_PARENT = """
import sys
from pathlib import Path
from ggufkit.quantize.engines import BinaryEngine, QuantizeOptions
BinaryEngine._run([sys.argv[1]], "q8_0", QuantizeOptions())
"""


@pytest.mark.posix_only
def test_llama_quantize_dies_with_ggufkit_killed_by_sigkill(tmp_path: Path) -> None:
    """llama-quantize is tied to ggufkit as the other tools are (without a watcher process where
    the system can do it: its start-up stays one process)."""
    pid_file = tmp_path / "tool.pid"
    fake = tmp_path / "llama-quantize"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(300)\n"
    )
    fake.chmod(0o755)
    _assert_dies_with_its_parent(_QUANTIZE_PARENT, str(fake), pid_file)


@pytest.mark.posix_only
def test_a_failed_run_stops_what_the_tool_started(tmp_path: Path) -> None:
    """When run_tool fails on ggufkit's side (here its line callback raises), the tool's whole
    process group is killed, not only the tool."""
    from ggufkit.llamacpp.runner import run_tool

    pid_file = tmp_path / "grandchild.pid"
    tool = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n"
    )

    def fail(line: str) -> None:
        raise RuntimeError("the caller gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        run_tool([sys.executable, "-c", tool], what="a tool with a child", on_line=fail)
    grandchild = int(pid_file.read_text())
    dead = _wait_for(lambda: _gone(grandchild), 30)
    if not dead:
        os.kill(grandchild, 9)
    assert dead, "the tool's own child outlived the failed run"


def test_the_job_object_calls_have_their_c_prototypes() -> None:
    """Windows' job-object functions are declared (a HANDLE is 64 bits: ctypes' default int
    return type would cut it); checked here on any OS with a stand-in for kernel32."""
    from ctypes import wintypes
    from types import SimpleNamespace

    from ggufkit.llamacpp.lifeline import declare_prototypes

    names = ("CreateJobObjectW", "SetInformationJobObject", "AssignProcessToJobObject")
    names += ("TerminateJobObject", "CloseHandle")
    fake = declare_prototypes(SimpleNamespace(**{n: SimpleNamespace() for n in names}))
    handle = wintypes.HANDLE
    assert fake.CreateJobObjectW.restype is handle
    for name in names:
        function = getattr(fake, name)
        assert function.argtypes and function.restype is not None, name
        if name != "CreateJobObjectW":
            assert function.argtypes[0] is handle and function.restype is wintypes.BOOL, name
    assert fake.AssignProcessToJobObject.argtypes == [handle, handle]
