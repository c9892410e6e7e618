from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ggufkit.core.errors import DiskSpaceError, UsageError, WorkspaceError
from ggufkit.core.fsutil import (
    atomic_dir,
    atomic_output,
    check_free_disk,
    check_output_path,
    locked,
    output_lock,
    partial_path,
    partials,
    write_json_atomic,
)


def test_atomic_output_renames_on_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.bin"
    with atomic_output(final) as tmp:
        assert tmp.parent == final.parent
        assert tmp.name.startswith(f"out.bin.{os.getpid()}.") and tmp.name.endswith(".partial")
        assert partials(final) == {} and tmp != partial_path(final)  # each writer its own name
        tmp.write_bytes(b"data")
        assert not final.exists() and partials(final) == {tmp: os.getpid()}
    assert final.read_bytes() == b"data"
    assert partials(final) == {}


def test_atomic_output_removes_partial_on_error(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_output(final) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert final.read_bytes() == b"old"
    assert partials(final) == {}


def test_two_writers_of_one_output_keep_their_own_files(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    with atomic_output(final) as first:
        first.write_bytes(b"first")
        with atomic_output(final) as second:  # a second live writer: it must not touch `first`
            assert second != first and first.read_bytes() == b"first"
            second.write_bytes(b"second")
        assert final.read_bytes() == b"second" and first.read_bytes() == b"first"
    assert final.read_bytes() == b"first" and partials(final) == {}


def test_leftovers_of_dead_writers_are_removed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ggufkit.core.partials as fsutil

    held = []
    real_locked = fsutil.locked

    def recording_locked(path: Path, **kwargs: Any) -> Any:
        held.append(Path(path))
        return real_locked(path, **kwargs)

    monkeypatch.setattr(fsutil, "locked", recording_locked)
    final = tmp_path / "out.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    killed = final.with_name(f"out.bin.{dead_pid}.0123abcd.partial")
    killed.write_bytes(b"half of a killed run")
    legacy = final.with_name("out.bin.partial")  # the name earlier versions used
    legacy.mkdir()
    live = final.with_name(f"out.bin.{os.getppid()}.89abcdef.partial")  # a writer still running
    live.write_bytes(b"still being written")
    other = tmp_path / "out.bin.x.1.0123abcd.partial"  # another output's, not ours
    other.write_bytes(b"")
    assert set(partials(final)) == {killed, legacy, live}
    with atomic_output(final) as tmp:
        assert not killed.exists() and not legacy.exists()
        assert live.exists() and other.exists()
        tmp.write_bytes(b"done")
    assert final.read_bytes() == b"done" and set(partials(final)) == {live}
    assert held == [output_lock(final)]  # the sweep ran under the output's lock, once


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_json_is_written_atomically(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert path.read_text().strip().startswith("{")


def test_free_disk_probe_can_be_faked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(10 * 1024 * 1024))
    with pytest.raises(DiskSpaceError, match="need 1.00 GiB"):
        check_free_disk(tmp_path / "x.gguf", 1024**3)
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(10 * 1024**3))
    check_free_disk(tmp_path / "x.gguf", 1024**3)


def test_output_path_checks(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        check_output_path(tmp_path)
    source = tmp_path / "in.gguf"
    source.write_bytes(b"x")
    with pytest.raises(UsageError, match="same file"):
        check_output_path(source, inputs=(source,))


def test_lock_times_out_when_held(tmp_path: Path) -> None:
    lock = tmp_path / "ws.lock"
    with locked(lock, what="the workspace"):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            assert pool.apply(_try_lock, (str(lock),)) == "locked"


def _try_lock(path: str) -> str:
    try:
        with locked(Path(path), what="the workspace", timeout=0.2):
            return "free"
    except WorkspaceError:
        return "locked"


def test_memory_preflight_can_be_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggufkit.core.errors import MemoryShortageError
    from ggufkit.core.fsutil import check_free_memory

    monkeypatch.setenv("GGUFKIT_FAKE_AVAILABLE_MEMORY", str(100 * 1024 * 1024))
    with pytest.raises(MemoryShortageError, match="about 1.00 GiB needed"):
        check_free_memory(1024**3, what="the merge")
    check_free_memory(10 * 1024 * 1024, what="the merge")
