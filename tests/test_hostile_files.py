"""Hostile inputs, the guards on files (issue 26): what a file holds never reaches the terminal
raw, an output never replaces an input, and a partial from another machine is not deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import atomic_output, check_output_path, partial_path, partials

# Sequences a terminal obeys: clear the screen, an OSC 8 hyperlink, a carriage return that
# overwrites the line, a bell, a right-to-left override.
HOSTILE = "\x1b[2J\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\rfake\u202eevil"


def _no_controls(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\u202e" not in text


def _hostile_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama" + HOSTILE)
    writer.add_name("name" + HOSTILE)
    writer.add_string("key" + HOSTILE, "value" + HOSTILE)
    weight = np.zeros((8, 8), dtype=np.float16)
    writer.add_tensor("blk.0" + HOSTILE, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_escapes_what_the_file_holds(tmp_path: Path) -> None:
    model = _hostile_gguf(tmp_path / "m.gguf")
    result = CliRunner().invoke(cli, ["inspect", str(model), "--tensors"])
    assert result.exit_code == 0, result.output
    _no_controls(result.output)
    assert "\\e[2J" in result.output and "\\u202e" in result.output  # shown, not obeyed


def test_tables_and_errors_escape_control_characters(tmp_path: Path) -> None:
    from ggufkit.core.text import markdown_table

    table = markdown_table(["model"], [["name" + HOSTILE]], "l")
    _no_controls(table)
    assert "\\e]8;;" in table and len(table.splitlines()) == 3
    bad = tmp_path / ("x" + HOSTILE + ".gguf")
    result = CliRunner().invoke(cli, ["inspect", str(bad)])
    assert result.exit_code != 0 and "x\\e[2J" in result.output
    _no_controls(result.output)


@pytest.mark.posix_only  # symlinks need a privilege on Windows
def test_convert_refuses_an_output_that_replaces_a_file_of_its_input(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    weights = model / "model.safetensors"
    before = weights.read_bytes()
    result = CliRunner().invoke(cli, ["convert", str(model), "-o", str(weights), "--force"])
    assert result.exit_code == 2 and "would replace" in result.output, result.output
    assert weights.read_bytes() == before
    # through a link to the folder too
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    with pytest.raises(UsageError, match="would replace"):
        check_output_path(tmp_path / "link" / "config.json", inputs=(model,))
    check_output_path(model / "model-f16.gguf", inputs=(model,))  # a new file there is fine
    # an earlier output written beside the weights is replaced with --force, as upstream does
    for _ in range(2):
        again = CliRunner().invoke(
            cli, ["convert", str(model), "-o", str(model / "model-F16.gguf"), "--force"]
        )
        assert again.exit_code == 0, again.output
    assert weights.read_bytes() == before
    # ... but not a file that only calls itself .gguf
    (model / "weights.gguf").write_bytes(before)
    with pytest.raises(UsageError, match="would replace"):
        check_output_path(model / "weights.gguf", inputs=(model,))


@pytest.mark.posix_only  # symlinks need a privilege on Windows
def test_output_checks_agree_on_links_and_case(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x")
    (tmp_path / "link.gguf").symlink_to(source)
    for output in (
        tmp_path / "link.gguf",
        tmp_path / "MODEL.GGUF",
        tmp_path / "a" / ".." / "model.gguf",
    ):
        with pytest.raises(UsageError, match="same file"):
            check_output_path(output, inputs=(source,))


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _remote_partial(final: Path, pid: int) -> Path:
    """The partial a writer with ``pid`` on another node sharing the folder is writing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "getpid", lambda: pid)
        try:
            import ggufkit.core.partials as leases
        except ImportError:  # the code before the guard: its names had no host
            pass
        else:
            patch.setattr(leases, "_host_tag", "0badc0de")
        path = partial_path(final)
    path.write_bytes(b"being written on another node")
    return path


def test_a_partial_from_another_machine_is_kept_until_its_lease_expires(tmp_path: Path) -> None:
    final = tmp_path / "out.gguf"
    # pid 1 exists here, a high pid does not: neither says anything about the other machine.
    remote = [_remote_partial(final, pid) for pid in (1, 4 * 10**6)]
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"ours")
    assert all(path.exists() for path in remote), "a live remote writer lost its file"
    for path in remote:
        _age(path, 3600)  # the remote writer stopped renewing its lease an hour ago
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"again")
    assert set(partials(final)) == set()


def test_a_writer_renews_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ggufkit.core.partials as leases

    monkeypatch.setenv("GGUFKIT_PARTIAL_LEASE", "0.3")
    final = tmp_path / "slow.gguf"
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"slow")
        _age(tmp, 3600)
        deadline = time.monotonic() + 30
        while tmp.stat().st_mtime < time.time() - 60 and time.monotonic() < deadline:
            leases._heartbeat.wake.set()
            time.sleep(0.05)
            leases._heartbeat.wake.clear()
        assert tmp.stat().st_mtime > time.time() - 60, "the lease was not renewed"
        assert leases.stale_partials(final) == []


def test_merge_delta_output_checks_fold_case_as_the_others_do(tmp_path: Path) -> None:
    from ggufkit.delta.merge import check_paths

    base = tmp_path / "base"
    base.mkdir()
    for output in (tmp_path / "BASE", tmp_path / "Base" / "merged", tmp_path):
        with pytest.raises(UsageError, match="would overwrite --base"):
            check_paths(output, {"--base": base})
    check_paths(tmp_path / "merged", {"--base": base})


def test_a_short_lease_here_does_not_expire_another_writers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "out.gguf"
    remote = _remote_partial(final, 4 * 10**6)
    _age(remote, 60)  # renewed a minute ago, inside a default writer's lease
    monkeypatch.setenv("GGUFKIT_PARTIAL_LEASE", "10")
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"ours")
    assert remote.exists(), "a run with a short lease removed another writer's live file"
