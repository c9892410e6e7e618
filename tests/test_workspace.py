"""ggufkit.toml, make-like steps, the lock, `ggufkit status`, and out/manifest.json."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from filelock import FileLock
from hubserver import serving

from ggufkit import __version__
from ggufkit.cli import cli
from ggufkit.core.errors import InputError, UsageError, WorkspaceError
from ggufkit.core.fsutil import atomic_output
from ggufkit.workspace import Workspace, WorkspaceConfig, init_workspace, parse_types
from ggufkit.workspace.manifest import Manifest, fingerprint, record_eval


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_model(directory: Path, weights: bytes = b"weights-1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (directory / "tokenizer.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "README.md").write_text("not an input")
    return directory


@dataclass
class Fakes:
    """Stand-ins for the converter and llama-quantize: outputs derive from input bytes only."""

    converts: list[dict[str, Any]] = field(default_factory=list)
    quantizes: list[str] = field(default_factory=list)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    import ggufkit.convert
    import ggufkit.quantize

    calls = Fakes()

    def convert(model: Path, output: Path, *, outtype: str, delta_base: Path | None = None, **kw: Any) -> dict[str, Any]:  # fmt: skip
        calls.converts.append({"model": model, "delta_base": delta_base, **kw})
        digest = hashlib.sha256()
        for source in (delta_base, model):
            for file in sorted(Path(source).glob("*.safetensors")) if source else []:
                digest.update(file.read_bytes())
        with atomic_output(output) as tmp:
            tmp.write_bytes(b"GGUF" + outtype.encode() + digest.digest())
        return {"engine": "fake"}

    def quantize(
        source: Path, types: list[str], *, output: Path, **kw: Any
    ) -> list[dict[str, Any]]:
        calls.quantizes.append(types[0])
        with atomic_output(output) as tmp:
            tmp.write_bytes(Path(source).read_bytes() + types[0].encode())
        return [{"type": types[0].upper()}]

    monkeypatch.setattr(ggufkit.convert, "convert", convert)
    monkeypatch.setattr(ggufkit.quantize, "quantize", quantize)
    return calls


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """ggufkit's log lines (its logger does not propagate once the CLI has set it up)."""
    logger = logging.getLogger("ggufkit")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ggufkit")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    make_model(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    init_workspace(tmp_path, "tiny", types=["q4_0", "q8_0"])
    return Workspace.require()


def test_init_writes_a_commented_toml_that_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    make_model(tmp_path / "models" / "My Model")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["init", "models/My Model", "--types", "q4_0, Q8_0,q4_0"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "ggufkit.toml").read_text()
    assert text.count("\n#") >= 8 and '# delta_base = "owner/base-model"' in text
    config = WorkspaceConfig.from_toml(tmp_path / "ggufkit.toml")
    assert config == WorkspaceConfig(
        source="models/My Model", name="My-Model", types=["q4_0", "q8_0"]
    )

    again = runner.invoke(cli, ["init", "models/My Model"])
    assert again.exit_code == 2 and "already exists" in again.output
    forced = runner.invoke(
        cli, ["init", "acme/llama", "--force", "--revision", "v2", "--outdir", "build"]
    )
    assert forced.exit_code == 0, forced.output
    hub = WorkspaceConfig.from_toml(tmp_path / "ggufkit.toml")
    assert (hub.source, hub.name, hub.revision, hub.outdir) == (
        "acme/llama",
        "llama",
        "v2",
        "build",
    )

    missing = runner.invoke(cli, ["init", "./nowhere", "--force"])
    assert missing.exit_code == 1 and "no such directory" in missing.output
    with pytest.raises(UsageError, match="not a quantization type"):
        parse_types("q4_0,q4 0")
    with pytest.raises(UsageError, match="plain file name"):
        init_workspace(tmp_path, "acme/llama", name="../x", force=True)


def test_find_walks_up_and_require_says_what_to_do(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    found = Workspace.find(tmp_path / "sub" / "deeper")
    assert found is not None and found.root == tmp_path
    assert found.f16_path == tmp_path / "out" / "tiny-F16.gguf"
    assert found.quantized_path("q4_k_m") == tmp_path / "out" / "tiny-Q4_K_M.gguf"
    elsewhere = tmp_path.parent / f"{tmp_path.name}-empty"
    elsewhere.mkdir()
    assert Workspace.find(elsewhere) is None
    with pytest.raises(WorkspaceError) as missing:
        Workspace.require(elsewhere)
    assert "ggufkit init SOURCE" in (missing.value.hint or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('source = "x"\nname = "x"\nquant = ["q4_0"]\n', "unknown setting 'quant'"),
        ('source = "x"\nname = "x"\ntypes = "q4_0"\n', "`types` must be a list"),
        ('name = "x"\n', "`source` must be a non-empty string"),
        ('source = "x\nname = "x"\n', "not valid TOML"),
    ],
)
def test_bad_toml_is_a_workspace_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "ggufkit.toml").write_text(text)
    with pytest.raises(WorkspaceError, match=message):
        Workspace.find(tmp_path)


def test_steps_run_once_and_rerun_when_inputs_change(workspace: Workspace, fakes: Fakes, logs: pytest.LogCaptureFixture) -> None:  # fmt: skip
    weights = workspace.root / "tiny" / "model.safetensors"
    started = time.perf_counter()
    results = workspace.quantize(["q4_0"])
    wall = time.perf_counter() - started
    assert [r.skipped for r in results] == [False]
    assert len(fakes.converts) == 1 and fakes.quantizes == ["q4_0"]

    manifest = json.loads(workspace.manifest_path.read_text())
    f16 = manifest["artefacts"]["tiny-F16.gguf"]
    assert f16["step"] == "convert" and f16["sha256"] == sha256(workspace.f16_path)
    assert f16["inputs"][0]["kind"] == "local"
    assert f16["inputs"][0]["files"] == {
        name: sha256(workspace.root / "tiny" / name)
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    }  # README.md is not an input
    # The engine auto ran is recorded and counted: the fingerprint names the engine that made it.
    assert f16["options"] == {"outtype": "f16", "engine_used": "fake"}
    assert f16["result"] == {"engine": "fake"}
    assert f16["fingerprint"] == fingerprint("convert", f16["inputs"], f16["options"])
    assert f16["fingerprint"] != fingerprint("convert", f16["inputs"], {"outtype": "f16"})
    assert f16["environment"]["ggufkit"] == __version__ and f16["environment"]["llama_cpp_commit"]
    assert f16["command"][:2] == ["ggufkit", "convert"]
    # the step's own time (rounded to ms: a fake convert can take less), within the call
    assert 0 <= f16["seconds"] <= round(wall, 3)
    q4 = manifest["artefacts"]["tiny-Q4_0.gguf"]
    assert q4["inputs"][0]["sha256"] == f16["sha256"] and q4["size"] == workspace.quantized_path("q4_0").stat().st_size  # fmt: skip

    logs.clear()
    assert workspace.convert().skipped and all(r.skipped for r in workspace.quantize(["q4_0"]))
    assert len(fakes.converts) == 1 and len(fakes.quantizes) == 1
    assert (
        "convert: up to date (skipped)" in logs.text
        and "quantize: up to date (skipped)" in logs.text
    )

    os.utime(weights, ns=(1, 1))  # a new mtime, the same bytes: rehashed, still up to date
    assert all(r.skipped for r in workspace.quantize(["q4_0"]))

    weights.write_bytes(b"weights-2")
    assert [r.skipped for r in workspace.quantize(["q4_0"])] == [False]
    assert len(fakes.converts) == 2 and len(fakes.quantizes) == 2

    assert not workspace.convert(force=True).skipped  # same bytes again: quantize stays done
    assert workspace.quantize(["q4_0"])[0].skipped and len(fakes.converts) == 3

    workspace.quantized_path("q4_0").write_bytes(b"tampered")
    assert not workspace.quantize(["q4_0"])[0].skipped and len(fakes.quantizes) == 3


def test_default_types_come_from_the_toml(workspace: Workspace, fakes: Fakes) -> None:
    outputs = [r.output for r in workspace.quantize()]
    assert outputs == [workspace.quantized_path("q4_0"), workspace.quantized_path("q8_0")]
    assert fakes.quantizes == ["q4_0", "q8_0"]


def test_a_second_run_is_refused_while_one_holds_the_lock(
    workspace: Workspace, fakes: Fakes
) -> None:
    holder = FileLock(str(workspace.root / ".ggufkit.lock"))
    holder.acquire()
    try:
        with pytest.raises(WorkspaceError, match="in use by another ggufkit process"):
            workspace.convert()
    finally:
        holder.release()
    assert not fakes.converts
    assert not workspace.convert().skipped  # free again


def test_status_shows_each_step_and_json_prints_the_manifest(workspace: Workspace, fakes: Fakes) -> None:  # fmt: skip
    runner = CliRunner()
    before = runner.invoke(cli, ["status"])
    assert before.exit_code == 0, before.output
    assert "tiny (local)" in before.stdout
    assert [line.split()[-1] for line in before.stdout.splitlines()[2:]] == ["missing"] * 3

    workspace.quantize()
    after = runner.invoke(cli, ["status"])
    assert after.stdout.count("up to date") == 3 and "out/tiny-Q8_0.gguf" in after.stdout
    as_json = runner.invoke(cli, ["status", "--json"])
    assert json.loads(as_json.stdout) == json.loads(workspace.manifest_path.read_text())

    (workspace.root / "tiny" / "model.safetensors").write_bytes(b"changed")
    stale = [s.state for s in workspace.status()]
    assert stale == ["out of date"] * 3


def test_status_without_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 1 and "ggufkit init SOURCE" in result.output


def test_record_eval_merges_and_is_dropped_when_the_artefact_is_rebuilt(workspace: Workspace, fakes: Fakes) -> None:  # fmt: skip
    workspace.quantize(["q4_0"])
    q4 = workspace.quantized_path("q4_0")
    record_eval(workspace.manifest_path, q4, {"perplexity": {"value": 12.5}})
    record = record_eval(workspace.manifest_path, q4, {"kld": 0.02})
    assert record["eval"] == {"perplexity": {"value": 12.5}, "kld": 0.02}
    assert Manifest.load(workspace.manifest_path).get(q4)["eval"]["kld"] == 0.02  # type: ignore[index]

    other = workspace.outdir / "hand-made.gguf"
    other.write_bytes(b"GGUF")
    external = record_eval(workspace.manifest_path, other, {"ppl": 1})
    assert external["step"] == "external" and external["sha256"] == sha256(other)
    with pytest.raises(InputError, match="does not exist"):
        record_eval(workspace.manifest_path, workspace.outdir / "gone.gguf", {"ppl": 1})

    (workspace.root / "tiny" / "model.safetensors").write_bytes(b"weights-3")
    workspace.quantize(["q4_0"])
    assert "eval" not in Manifest.load(workspace.manifest_path).get(q4)  # type: ignore[operator]


def test_unreadable_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(WorkspaceError, match="unreadable") as error:
        Manifest.load(tmp_path / "manifest.json")
    assert "move it aside" in (error.value.hint or "")
    assert Manifest.load(tmp_path / "missing.json").artefacts == {}


def test_delta_workspace_merges_on_the_fly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: Fakes) -> None:  # fmt: skip
    make_model(tmp_path / "base", b"base-weights")
    make_model(tmp_path / "delta", b"delta-weights")
    monkeypatch.chdir(tmp_path)
    init_workspace(tmp_path, "delta", delta_base="base", name="merged")
    workspace = Workspace.require()
    workspace.convert()
    assert fakes.converts[0]["delta_base"] == tmp_path / "base"
    record = Manifest.load(workspace.manifest_path).get(workspace.f16_path)
    assert record is not None and [i["role"] for i in record["inputs"]] == ["base", "delta"]
    assert "--delta-base" in record["command"]
    (tmp_path / "base" / "model.safetensors").write_bytes(b"other base")
    assert not workspace.convert().skipped


def test_missing_local_source_is_an_input_error(workspace: Workspace, fakes: Fakes) -> None:
    (workspace.root / "ggufkit.toml").write_text('source = "./gone"\nname = "x"\n')
    with pytest.raises(InputError, match="no such directory"):
        Workspace.require().convert()


def test_hub_source_records_repo_and_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: Fakes) -> None:  # fmt: skip
    files = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors": b"hub weights"}
    with serving(monkeypatch, tmp_path / "hf-home") as hub:
        commit = hub.add_repo("acme/tiny", {"main": files}).revisions["main"].sha
        monkeypatch.chdir(tmp_path)
        init_workspace(tmp_path, "acme/tiny")
        workspace = Workspace.require()
        status = CliRunner().invoke(cli, ["status"])
        assert "acme/tiny (not downloaded)" in status.stdout and not hub.gets("config.json")

        workspace.convert()
        record = Manifest.load(workspace.manifest_path).get(workspace.f16_path)
        assert record is not None
        source = record["inputs"][0]
        assert (source["kind"], source["repo_id"], source["commit"]) == ("hub", "acme/tiny", commit)
        assert source["files"]["model.safetensors"] == hashlib.sha256(b"hub weights").hexdigest()
        assert workspace.convert().skipped
        status = CliRunner().invoke(cli, ["status"])
        assert f"acme/tiny (cached at {commit})" in status.stdout


def test_cli_without_a_model_needs_a_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["convert"])
    assert result.exit_code == 1 and "ggufkit init SOURCE" in result.output


def test_cli_convert_and_quantize_use_the_workspace(workspace: Workspace, fakes: Fakes) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["quantize", "q8_0", "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)
    assert [(s["step"], s["skipped"]) for s in steps] == [("quantize", False)]
    assert fakes.quantizes == ["q8_0"] and len(fakes.converts) == 1  # converted first

    again = runner.invoke(cli, ["convert"])
    assert again.exit_code == 0 and "up to date (skipped)" in again.stdout
    forced = runner.invoke(cli, ["convert", "--force"])
    assert forced.exit_code == 0 and "built in" in forced.stdout and len(fakes.converts) == 2
    refused = runner.invoke(cli, ["convert", "--outtype", "bf16"])
    assert refused.exit_code == 2 and "come from ggufkit.toml" in refused.output


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_init_convert_quantize_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path
) -> None:
    """`ggufkit init MODEL`, then `ggufkit convert && ggufkit quantize q4_0` with no other arguments."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["init", "tiny-llama"]).exit_code == 0

    def build() -> tuple[str, str]:
        convert, quantize = (
            runner.invoke(cli, ["convert"]),
            runner.invoke(cli, ["quantize", "q4_0"]),
        )
        assert convert.exit_code == 0, convert.output
        assert quantize.exit_code == 0, quantize.output
        return convert.stdout, quantize.stdout

    first = build()
    f16, q4 = tmp_path / "out" / "tiny-llama-F16.gguf", tmp_path / "out" / "tiny-llama-Q4_0.gguf"
    assert "built in" in first[0] and "built in" in first[1]
    assert f16.read_bytes()[:4] == q4.read_bytes()[:4] == b"GGUF"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["artefacts"]
    weights = tmp_path / "tiny-llama" / "model.safetensors"
    assert manifest["tiny-llama-F16.gguf"]["inputs"][0]["files"]["model.safetensors"] == sha256(weights)  # fmt: skip
    assert manifest["tiny-llama-F16.gguf"]["sha256"] == sha256(f16)
    assert manifest["tiny-llama-Q4_0.gguf"]["inputs"][0]["sha256"] == sha256(f16)
    assert manifest["tiny-llama-Q4_0.gguf"]["sha256"] == sha256(q4)

    second = build()
    assert "up to date (skipped)" in second[0] and "up to date (skipped)" in second[1]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["artefacts"] == manifest

    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, weights, metadata={"format": "pt"})
    third = build()
    assert "built in" in third[0] and "built in" in third[1]
    rebuilt = json.loads((tmp_path / "out" / "manifest.json").read_text())["artefacts"]
    assert rebuilt["tiny-llama-F16.gguf"]["sha256"] != manifest["tiny-llama-F16.gguf"]["sha256"]
    assert rebuilt["tiny-llama-Q4_0.gguf"]["inputs"][0]["sha256"] == sha256(f16)
