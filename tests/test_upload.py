"""`ggufkit upload` against the fake Hub (tests/hubserver.py + hubupload.py) over real HTTP.

huggingface_hub uploads through Xet whenever hf_xet is importable; these tests turn Xet off
(HF_HUB_DISABLE_XET=1) and cover the LFS path: the Xet path is not tested here."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import FakeHub, serving

from ggufkit.cli import cli
from ggufkit.formats.gguf_split import shard_path

TOKEN = "hf_fakeWriteToken0123456789abcdef"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    with serving(monkeypatch, tmp_path / "hf-home") as server:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        server.tokens.add(TOKEN)
        yield server


def make_split_set(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shards = [shard_path(folder / "tiny-Q4_0.gguf", i, count) for i in range(count)]
    for i, shard in enumerate(shards):
        shard.write_bytes(b"GGUF" + bytes([i]) * (1000 + 100 * i))
    return shards


def upload(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["upload", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_split_set_goes_up_whole_from_its_first_shard(hub: FakeHub, tmp_path: Path) -> None:
    shards = make_split_set(tmp_path / "out")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    code, out, err = upload(
        "me/tiny-GGUF", str(shards[0]), str(notes), "--token", TOKEN, "--private"
    )
    assert code == 0, err
    expected = {p.name: p.read_bytes() for p in shards} | {"notes.txt": b"hello\n"}
    assert hub.files("me/tiny-GGUF") == expected
    assert hub.repos["me/tiny-GGUF"].private
    # The weights went through the large file store, the text file inline.
    assert sorted(hub.stored) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in shards)
    assert all(f"uploaded   {p.name}" in out for p in shards)


def test_a_branch_is_made_and_a_dry_run_sends_nothing(hub: FakeHub, tmp_path: Path) -> None:
    shards = make_split_set(tmp_path / "out", 2)
    code, out, err = upload("me/x", str(shards[0]), "--dry-run", "--token", TOKEN)
    assert code == 0, err
    assert "would upload to me/x@main (public)" in out and shards[1].name in out
    assert "total: " in out and f"({sum(p.stat().st_size for p in shards):,} bytes)" in out
    assert hub.requests == [] and "me/x" not in hub.repos
    code, out, err = upload("me/x", str(shards[0]), "--revision", "test", "--token", TOKEN)
    assert code == 0, err
    assert set(hub.files("me/x", "test")) == {p.name for p in shards}
    assert hub.files("me/x", "main") == {}


def test_an_interrupted_upload_is_finished_by_the_next_run(hub: FakeHub, tmp_path: Path) -> None:
    shards = make_split_set(tmp_path / "out")
    hub.fail_upload(shards[1].read_bytes(), 403)
    code, _out, err = upload("me/tiny-GGUF", str(shards[0]), "--token", TOKEN)
    assert code == 1 and "run the same command again" in err
    assert hub.files("me/tiny-GGUF") == {} and hub.commits == []
    first_run = list(hub.stored)
    assert hashlib.sha256(shards[1].read_bytes()).hexdigest() not in first_run
    assert len(first_run) == 2  # the other shards reached the store

    code, _out, err = upload("me/tiny-GGUF", str(shards[0]), "--token", TOKEN)
    assert code == 0, err
    assert hub.stored[len(first_run) :] == [hashlib.sha256(shards[1].read_bytes()).hexdigest()]
    assert hub.files("me/tiny-GGUF") == {p.name: p.read_bytes() for p in shards}


def test_a_rerun_uploads_nothing_new(hub: FakeHub, tmp_path: Path) -> None:
    shards = make_split_set(tmp_path / "out")
    assert upload("me/tiny-GGUF", str(shards[0]), "--token", TOKEN)[0] == 0
    stored, commits = list(hub.stored), list(hub.commits)
    code, out, err = upload("me/tiny-GGUF", str(shards[0]), "--token", TOKEN)
    assert code == 0, err
    assert hub.stored == stored and hub.commits == commits
    assert all(f"unchanged  {p.name}" in out for p in shards) and "uploaded" not in out
    # One changed shard: only it is sent.
    shards[2].write_bytes(b"GGUF changed")
    code, out, err = upload("me/tiny-GGUF", str(shards[0]), "--token", TOKEN)
    assert code == 0, err
    assert hub.stored[len(stored) :] == [hashlib.sha256(b"GGUF changed").hexdigest()]
    assert f"uploaded   {shards[2].name}" in out and f"unchanged  {shards[0].name}" in out


def test_the_token_appears_in_no_output(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GGUFKIT_DEBUG", "1")
    shards = make_split_set(tmp_path / "out", 2)
    seen = []
    for args in (
        ["--token", TOKEN],
        ["--token", TOKEN, "--json"],
        ["--token", TOKEN, "--dry-run"],
        ["--token", TOKEN + "x"],  # rejected: the message must not quote it either
    ):
        result = CliRunner().invoke(cli, ["-v", "upload", "me/t", str(shards[0]), *args])
        seen.append(result.output + str(result.exception or ""))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(cli, ["upload", "me/t", str(shards[0])])
    assert result.exit_code == 0, result.output
    seen.append(result.output)
    assert "rejected the token given with --token (401" in seen[3]
    assert all(r.authorized for r in hub.requests if r.method == "POST")
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    for text in [*seen, caplog.text]:
        assert TOKEN not in text
    assert not any(TOKEN.encode() in data for data in written)
