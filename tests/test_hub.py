"""Downloads against a fake Hub on 127.0.0.1 (tests/hubserver.py), HF_ENDPOINT pointed at it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import FakeHub, Request, serving

from ggufkit.cli import cli
from ggufkit.core.errors import HubError, InputError, UsageError
from ggufkit.hub import (
    cached_model,
    download,
    hub_settings,
    is_safe_name,
    looks_like_repo_id,
    model_files,
    resolve_model,
    select_model_files,
)

TOKEN = "hf_test_secret_token_4f9a"
WEIGHTS = bytes(range(256)) * 1200  # 300 KiB: big enough to cut mid-transfer
CONFIG_MAIN = b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}'
CONFIG_V1 = b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 32}'

MAIN = {
    "config.json": CONFIG_MAIN,
    "tokenizer.json": b'{"model": {}}',
    "tokenizer_config.json": b"{}",
    "model.safetensors": WEIGHTS,
    "pytorch_model.bin": b"old pickled weights",
    "training_args.bin": b"trainer state",
    "README.md": b"# tiny",
    "images/logo.png": b"\x89PNG",
    "onnx/model.onnx": b"onnx",
}
V1 = {
    "config.json": CONFIG_V1,
    "tokenizer.json": b'{"model": {}}',
    "pytorch_model.bin": b"v1 weights",
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub with acme/tiny (main, v1), a gated repo and a repo without weights."""
    with serving(monkeypatch, Path(os.environ["HF_HOME"])) as server:
        server.add_repo("acme/tiny", {"main": MAIN, "v1": V1})
        gated = {"main": {"config.json": b"{}", "model.safetensors": b"w"}}
        server.add_repo("acme/gated", gated, gated=True)
        server.add_repo("acme/noweights", {"main": {"config.json": b"{}", "README.md": b"x"}})
        server.tokens.add(TOKEN)
        yield server


def sha(repo: str, ref: str, hub: FakeHub) -> str:
    return hub.repos[repo].revisions[ref].sha


def names(path: Path) -> set[str]:
    return {
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts
    }


def test_default_download_takes_config_tokenizer_and_safetensors(hub: FakeHub) -> None:
    model = download("acme/tiny")
    assert names(model.path) == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    }
    assert (model.path / "model.safetensors").read_bytes() == WEIGHTS
    assert model.commit == sha("acme/tiny", "main", hub)
    assert model.repo_id == "acme/tiny" and model.revision is None
    assert Path(os.environ["HF_HOME"]) in model.path.parents  # the standard cache, under HF_HOME


def test_second_download_fetches_nothing(hub: FakeHub) -> None:
    download("acme/tiny")
    download("acme/tiny")
    assert len(hub.gets("model.safetensors")) == 1


def test_revision_pin_by_tag_and_by_commit_falls_back_to_bin(hub: FakeHub) -> None:
    model = download("acme/tiny", revision="v1")
    assert model.commit == sha("acme/tiny", "v1", hub)
    assert names(model.path) == {"config.json", "tokenizer.json", "pytorch_model.bin"}
    assert (model.path / "config.json").read_bytes() == CONFIG_V1

    cached = cached_model("acme/tiny", revision="v1")  # the pin was recorded for offline runs
    assert cached is not None and cached.commit == model.commit

    main_sha = sha("acme/tiny", "main", hub)
    pinned = download("acme/tiny", revision=main_sha)
    assert pinned.commit == main_sha and pinned.path.name == main_sha
    assert (pinned.path / "config.json").read_bytes() == CONFIG_MAIN


def test_include_replaces_defaults_and_exclude_filters(hub: FakeHub, tmp_path: Path) -> None:
    only_json = download("acme/tiny", include=["*.json"], local_dir=tmp_path / "a")
    assert names(only_json.path) == {"config.json", "tokenizer.json", "tokenizer_config.json"}
    assert only_json.path == (tmp_path / "a").resolve()

    no_tok = download("acme/tiny", exclude=["tokenizer*"], local_dir=tmp_path / "b")
    assert names(no_tok.path) == {"config.json", "model.safetensors"}

    with pytest.raises(HubError, match="no file of acme/tiny@main matches --include"):
        download("acme/tiny", include=["*.gguf"])
    with pytest.raises(HubError, match=r"no model weights \(after --exclude\)"):
        download("acme/tiny", exclude=["*.safetensors"])


def test_missing_repo_revision_and_weights(hub: FakeHub) -> None:
    with pytest.raises(HubError, match="Hub repo acme/nope not found") as missing:
        download("acme/nope")
    assert "owner/name" in (missing.value.hint or "")
    with pytest.raises(HubError, match="revision 'nope' not found in acme/tiny"):
        download("acme/tiny", revision="nope")
    with pytest.raises(HubError, match="no model weights"):
        download("acme/noweights")


def test_a_moved_branch_is_followed_and_recorded(hub: FakeHub) -> None:
    first = download("acme/tiny")
    repo = hub.repos["acme/tiny"]
    repo.revisions["main"] = hub.new_revision(repo, "main", {"config.json": CONFIG_V1})
    moved = download("acme/tiny")
    assert moved.commit == sha("acme/tiny", "main", hub) != first.commit
    assert (moved.path / "config.json").read_bytes() == CONFIG_V1
    assert cached_model("acme/tiny") == moved  # offline runs now find the new commit
    assert len(hub.gets("model.safetensors")) == 1  # the unchanged weights were not fetched again


def test_a_branch_moving_mid_download_does_not_mix_commits(hub: FakeHub) -> None:
    repo = hub.repos["acme/tiny"]
    listed = repo.revisions["main"]

    def move_main(request: Request) -> None:  # once the files at the listed commit are asked for
        if "/tree/" in request.path and repo.revisions["main"] is listed:
            repo.revisions["old"] = listed
            repo.revisions["main"] = hub.new_revision(repo, "main", {"config.json": CONFIG_V1})

    hub.before = move_main
    model = download("acme/tiny")
    assert repo.revisions["main"] is not listed  # the branch did move
    assert model.commit == listed.sha and model.path.name == listed.sha
    assert (model.path / "config.json").read_bytes() == CONFIG_MAIN


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, "the Hub rejected the token given with --token"), (404, "vanished from the Hub")],
)
def test_a_file_refused_mid_download_is_a_clear_hub_error(
    hub: FakeHub, status: int, message: str
) -> None:
    hub.fail("model.safetensors", status)
    with pytest.raises(HubError, match=message) as failed:
        download("acme/tiny", token=TOKEN)
    assert failed.value.hint and TOKEN not in str(failed.value) + failed.value.hint
    assert cached_model("acme/tiny") is None  # nothing half-downloaded is taken for the model


def test_gated_repo_needs_a_valid_token(hub: FakeHub) -> None:
    with pytest.raises(HubError, match="gated") as gated:
        download("acme/gated")
    assert "hf auth login" in (gated.value.hint or "")
    with pytest.raises(HubError, match="rejected the token given with --token") as bad:
        download("acme/gated", token="hf_wrong_secret_1234")
    assert "hf_wrong_secret_1234" not in str(bad.value) + (bad.value.hint or "")
    before = len(hub.requests)
    assert download("acme/gated", token=TOKEN).commit == sha("acme/gated", "main", hub)
    sent = hub.requests[before:]
    assert sent and all(r.authorized for r in sent)  # the token reached every call


def test_token_from_env_and_stored_login(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert download("acme/gated").repo_id == "acme/gated"
    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_stale_login_token")
    with pytest.raises(HubError, match="rejected the stored login token"):
        download("acme/gated", include=["config.json"])  # not cached yet: the Hub is asked


def test_offline_uses_the_warm_cache(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    online = download("acme/tiny")
    local = tmp_path / "local"
    download("acme/tiny", local_dir=local)
    v1 = download("acme/tiny", revision="v1")
    hub.stop()  # nothing may reach the network from here on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download("acme/tiny") == online
    assert download("acme/tiny", revision="v1").path == v1.path
    assert download("acme/tiny", local_dir=local).path == local.resolve()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE") as cold:
        download("acme/other")
    assert "ggufkit download acme/other" in (cold.value.hint or "")


def test_offline_without_a_cached_listing_reads_the_snapshot(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache that another tool (or an older huggingface_hub) filled holds no tree listing."""
    import shutil

    from huggingface_hub import constants

    online = download("acme/tiny")
    shutil.rmtree(hub_settings().cache_dir / "models--acme--tiny" / "trees")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download("acme/tiny", offline=True) == online
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        download("acme/tiny", revision=sha("acme/tiny", "v1", hub), offline=True)


def test_unreachable_hub_falls_back_to_cache(hub: FakeHub) -> None:
    online = download("acme/tiny")
    hub.stop()
    assert download("acme/tiny").path == online.path
    with pytest.raises(HubError, match="cannot reach the Hub"):
        download("acme/tiny", revision="v1")


def test_cut_transfer_resumes_with_a_range_request(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub keeps what it has written in whole chunks (10 MiB); small chunks keep the file small.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    cut = 100_000
    hub.cut("model.safetensors", after=cut)
    model = download("acme/tiny")
    data = (model.path / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(WEIGHTS).digest()
    first, second = hub.gets("model.safetensors")
    assert first.range is None
    assert second.range is not None and second.range.startswith("bytes=")
    start = int(second.range[len("bytes=") :].rstrip("-"))
    assert 0 < start <= cut  # resumed where the transfer broke, not restarted


def test_a_run_cut_off_mid_file_keeps_no_damaged_blob_and_the_next_run_completes_it(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    hub.cut("model.safetensors", after=100_000, then_fail=503)  # it breaks, and its retry fails
    with pytest.raises(HubError, match="HTTP 503"):
        download("acme/tiny")
    blobs = hub_settings().cache_dir / "models--acme--tiny" / "blobs"
    weights_blob = blobs / hashlib.sha256(WEIGHTS).hexdigest()
    assert not weights_blob.exists() and not list(blobs.glob("*.incomplete"))
    model = download("acme/tiny")
    assert (model.path / "model.safetensors").read_bytes() == WEIGHTS
    assert weights_blob.read_bytes() == WEIGHTS
    # huggingface_hub keeps no partial file across calls: the next call fetches the file whole.
    assert [g.range for g in hub.gets("model.safetensors")][2:] == [None]


def test_failed_run_then_next_run_fetches_only_what_is_missing(hub: FakeHub) -> None:
    hub.fail("model.safetensors", 503)
    with pytest.raises(HubError, match="HTTP 503") as failed:
        download("acme/tiny")
    assert "not fetched again" in (failed.value.hint or "")
    model = download("acme/tiny")
    assert (model.path / "model.safetensors").read_bytes() == WEIGHTS
    assert len(hub.gets("config.json")) == 1  # kept from the failed run
    assert len(hub.gets("model.safetensors")) == 2


def test_file_names_cannot_escape_the_target(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/evil", {"main": {"config.json": b"{}", "../escape.safetensors": b"x"}})
    with pytest.raises(HubError, match="escape the download directory"):
        download("acme/evil", include=["*"], local_dir=tmp_path / "evil")
    assert not (tmp_path / "escape.safetensors").exists()
    assert (
        not is_safe_name("../x")
        and not is_safe_name("/etc/passwd")
        and not is_safe_name("a\\..\\b")
    )
    assert is_safe_name("sub/model.safetensors")


def test_select_model_files() -> None:
    repo = [
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "consolidated.safetensors",
        "pytorch_model.bin",
        "optimizer.pt",
        "training_args.bin",
        "README.md",
        "logo.png",
        "onnx/model.onnx",
        "checkpoint-5/model.safetensors",
        "qwen.tiktoken",
    ]
    assert select_model_files(repo) == sorted([
        "config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "qwen.tiktoken",
    ])  # fmt: skip
    bins = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json", "training_args.bin", "rng_state_0.bin"]  # fmt: skip
    assert select_model_files(bins) == sorted(set(bins) - {"training_args.bin", "rng_state_0.bin"})


def test_resolve_model_local_hub_and_errors(hub: FakeHub, tmp_path: Path) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_bytes(b"w")
    (local / "notes.txt").write_text("not an input")
    resolved = resolve_model(local)
    assert resolved.path == local.absolute() and not resolved.is_hub
    assert model_files(local) == [local / "config.json", local / "model.safetensors"]
    assert resolve_model("acme/tiny").commit == sha("acme/tiny", "main", hub)

    with pytest.raises(InputError, match="not a Hub repo id"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="is a file"):
        resolve_model(local / "config.json")
    with pytest.raises(UsageError, match="--revision applies to Hub models"):
        resolve_model(local, revision="main")
    assert looks_like_repo_id("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    for bad in ("./a/b", "a/../b", "a/b/c", "a--b/c", "/abs/path", "single"):
        assert not looks_like_repo_id(bad), bad


def test_cached_model_never_downloads(hub: FakeHub) -> None:
    assert cached_model("acme/tiny") is None
    assert not hub.gets("config.json")
    online = download("acme/tiny")
    assert cached_model("acme/tiny") == online


def test_cli_download_prints_commit_and_path_and_hides_the_token(hub: FakeHub) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["download", "acme/gated", "--token", TOKEN])
    assert result.exit_code == 0, result.output
    commit = sha("acme/gated", "main", hub)
    assert f"acme/gated at commit {commit}" in result.output
    assert TOKEN not in result.output

    result = runner.invoke(cli, ["download", "acme/gated", "--token", "hf_bad_secret_9"])
    assert result.exit_code == 1
    assert "Error: the Hub rejected" in result.output and "hf_bad_secret_9" not in result.output

    result = runner.invoke(cli, ["download", "acme/tiny", "--revision", "v1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["commit"] == sha("acme/tiny", "v1", hub) and data["revision"] == "v1"

    result = runner.invoke(cli, ["download", "not a repo"])
    assert result.exit_code == 2 and "owner/name" in result.output


def test_cli_download_in_a_fresh_process(hub: FakeHub, tmp_path: Path) -> None:
    """HF_ENDPOINT and HF_HOME set before huggingface_hub is imported, as a user would."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "fresh-home")}
    run = subprocess.run(
        [sys.executable, "-m", "ggufkit", "download", "acme/tiny", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    path = Path(json.loads(run.stdout)["path"])
    assert tmp_path / "fresh-home" in path.parents
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
