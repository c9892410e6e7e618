"""Which engine converts: ``auto``'s fallback to upstream, and ``engine`` in ggufkit.toml / batch.toml.

The native converter's "can I take this?" check (``check_native``) runs before anything is
written; ``auto`` then converts through upstream and says why, ``native`` refuses with a hint.
In a workspace the engine comes from ``convert --engine``, else ggufkit.toml, else the engine an
earlier explicit run recorded, so that the convert ``quantize`` runs first does not redo it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.convert import ENGINES, convert
from ggufkit.convert.arch.llama import LlamaConverter
from ggufkit.core.errors import NativeUnsupportedError, WorkspaceError
from ggufkit.core.fsutil import atomic_output
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.workspace import Workspace, WorkspaceConfig, init_workspace
from ggufkit.workspace import config as workspace_config
from ggufkit.workspace.batch import build_graph, load_plan
from ggufkit.workspace.batch.execute import execute, workspace
from ggufkit.workspace.manifest import Manifest

LONGROPE = {"rope_type": "longrope", "factor": 2.0, "rope_theta": 10000.0}


def with_config(source: Path, target: Path, **changes: Any) -> Path:
    shutil.copytree(source, target)
    config = tiny.read_config(target)
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def write_model(directory: Path, config: dict[str, Any], tokenizer: Any = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if tokenizer is not None:
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return directory


# --- the native converter's check -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "tokenizer", "reason"),
    [
        ({"rope_parameters": LONGROPE}, None, "rope type 'longrope'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "beta_fast": 32}}, None, "beta_fast"),
        ({"quantization_config": {"quant_method": "fp8"}}, None, "pre-quantized"),
        ({}, {"model": {"type": "WordPiece", "vocab": {}}}, "holds a WordPiece model"),
        ({}, {"model": {"type": "Unigram", "vocab": []}}, "holds a Unigram model"),
    ],
)
def test_check_native_names_what_it_cannot_take(
    tmp_path: Path, config: dict[str, Any], tokenizer: Any, reason: str
) -> None:
    model = write_model(
        tmp_path / "m", {"architectures": ["LlamaForCausalLM"], **config}, tokenizer
    )
    with pytest.raises(NativeUnsupportedError, match=reason):
        LlamaConverter.check_native(model, json.loads((model / "config.json").read_text()))


def test_check_native_takes_both_bpe_kinds(tmp_path: Path) -> None:
    for name, byte_fallback in (("spm", True), ("bpe", False)):
        tokenizer = {"model": {"type": "BPE", "byte_fallback": byte_fallback, "vocab": {}}}
        model = write_model(tmp_path / name, {"architectures": ["LlamaForCausalLM"]}, tokenizer)
        LlamaConverter.check_native(model, {})  # no error


@pytest.mark.needs_torch
def test_native_refuses_before_writing_and_says_what_to_do(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    model = with_config(tiny_llama_dir, tmp_path / "longrope", rope_parameters=LONGROPE)
    with pytest.raises(NativeUnsupportedError, match="longrope") as caught:
        convert(model, tmp_path / "out.gguf", engine="native")
    assert '`engine="upstream"`' in (caught.value.hint or "")
    assert 'engine = "upstream" in ggufkit.toml' in (caught.value.hint or "")
    assert list(tmp_path.glob("out.gguf*")) == []


@pytest.mark.slow
@pytest.mark.needs_torch
def test_auto_falls_back_to_upstream_with_a_note(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = with_config(tiny_llama_dir, tmp_path / "longrope", rope_parameters=LONGROPE)
    out = tmp_path / "auto.gguf"
    result = CliRunner().invoke(cli, ["convert", str(model), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine"] == "upstream"
    note = data["notes"][0]
    assert note.startswith("auto engine: the native engine cannot take it") and "longrope" in note
    info = read_gguf(out, max_array_items=0)
    assert info.metadata["general.architecture"] == "llama"
    assert info.metadata["llama.rope.scaling.type"] == "longrope"
    assert len(info.tensors) == data["n_tensors"] == 2 + 2 * 9 + 1  # embd, norm, output; blocks


def test_engine_names_agree() -> None:
    assert workspace_config.ENGINES == ENGINES


# --- workspaces ------------------------------------------------------------------------------


@pytest.fixture
def converts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A stand-in converter: the output derives from the weights; each call's options are kept."""
    import ggufkit.convert

    calls: list[dict[str, Any]] = []

    def fake(model: Path, output: Path, *, outtype: str, **kw: Any) -> dict[str, Any]:
        calls.append(kw)
        digest = hashlib.sha256((Path(model) / "model.safetensors").read_bytes()).digest()
        with atomic_output(output) as tmp:
            tmp.write_bytes(b"GGUF" + outtype.encode() + digest)
        return {"engine": kw["engine"]}

    monkeypatch.setattr(ggufkit.convert, "convert", fake)
    return calls


def make_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str | None) -> Path:
    model = write_model(tmp_path / "tiny", {"architectures": ["LlamaForCausalLM"]}, {})
    (model / "model.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    init_workspace(tmp_path, "tiny")
    if engine is not None:
        toml = tmp_path / "ggufkit.toml"
        toml.write_text(toml.read_text() + f'engine = "{engine}"\n', encoding="utf-8")
    return tmp_path


def recorded_engine(root: Path) -> Any:
    ws = Workspace.require(root)
    record = Manifest.load(ws.manifest_path).get(ws.f16_path)
    assert record is not None
    return record["options"].get("engine")


def test_toml_engine_is_read_checked_and_templated(tmp_path: Path) -> None:
    init_workspace(tmp_path, "acme/model")
    toml = tmp_path / "ggufkit.toml"
    assert '# engine = "upstream"' in toml.read_text()
    assert WorkspaceConfig.from_toml(toml).engine is None
    toml.write_text(toml.read_text() + 'engine = "upstream"\n', encoding="utf-8")
    assert WorkspaceConfig.from_toml(toml).engine == "upstream"
    toml.write_text(toml.read_text().replace('"upstream"\n', '"fast"\n'), encoding="utf-8")
    with pytest.raises(WorkspaceError, match="`engine` 'fast' is unknown"):
        WorkspaceConfig.from_toml(toml)


def test_toml_engine_is_passed_counted_and_kept_by_quantize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converts: list[dict[str, Any]]
) -> None:
    root = make_workspace(tmp_path, monkeypatch, "upstream")
    runner = CliRunner()
    assert runner.invoke(cli, ["convert"]).exit_code == 0
    assert [c["engine"] for c in converts] == ["upstream"]
    assert recorded_engine(root) == "upstream"
    # the convert `quantize` runs first is up to date: same engine, same options
    assert Workspace.require(root).convert().skipped
    assert Workspace.require(root).status()[0].state == "up to date"
    assert len(converts) == 1


def test_cli_engine_sticks_until_ggufkit_toml_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converts: list[dict[str, Any]]
) -> None:
    """The issue's sequence: `convert --engine upstream` in a workspace, then `quantize`."""
    root = make_workspace(tmp_path, monkeypatch, None)
    runner = CliRunner()
    assert runner.invoke(cli, ["convert", "--engine", "upstream"]).exit_code == 0
    assert recorded_engine(root) == "upstream"
    assert Workspace.require(root).convert().skipped  # what `ggufkit quantize` runs first
    assert Workspace.require(root).status()[0].state == "up to date"
    assert [c["engine"] for c in converts] == ["upstream"]
    # An explicit engine is a new choice: auto converts again, and records no engine.
    assert runner.invoke(cli, ["convert", "--engine", "auto"]).exit_code == 0
    assert [c["engine"] for c in converts] == ["upstream", "auto"]
    assert recorded_engine(root) is None


def test_cli_engine_overrides_the_toml_for_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converts: list[dict[str, Any]]
) -> None:
    root = make_workspace(tmp_path, monkeypatch, "native")
    assert CliRunner().invoke(cli, ["convert", "--engine", "upstream"]).exit_code == 0
    assert recorded_engine(root) == "upstream"
    assert not Workspace.require(root).convert().skipped  # ggufkit.toml's engine again
    assert [c["engine"] for c in converts] == ["upstream", "native"]
    assert recorded_engine(root) == "native"


# --- batch plans -----------------------------------------------------------------------------


def test_batch_models_take_an_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converts: list[dict[str, Any]]
) -> None:
    for name in ("a", "b"):
        model = write_model(tmp_path / name, {"architectures": ["LlamaForCausalLM"]}, {})
        (model / "model.safetensors").write_bytes(name.encode())
    plan_file = tmp_path / "batch.toml"
    plan_file.write_text(
        'types = ["q4_0"]\n[[models]]\nsource = "a"\nengine = "upstream"\n'
        '[[models]]\nsource = "b"\n',
        encoding="utf-8",
    )
    plan = load_plan(plan_file)
    assert [m.engine for m in plan.models] == ["upstream", None]
    assert workspace(plan, plan.models[0]).config.engine == "upstream"
    steps = {s.id: s for s in build_graph(plan)}
    for name in ("a", "b"):
        outcome = execute(plan, steps[f"{name}:convert"])
        assert outcome.status == "built", outcome.error
    assert [c["engine"] for c in converts] == ["upstream", "auto"]
    again = execute(plan, steps["a:convert"])
    assert again.status == "up to date"

    plan_file.write_text(
        'types = ["q4_0"]\n[[models]]\nsource = "a"\nengine = "both"\n', encoding="utf-8"
    )
    with pytest.raises(WorkspaceError, match="engine 'both' is unknown"):
        load_plan(plan_file)


# --- the upstream engine's parent stays thin -------------------------------------------------


def test_the_convert_entry_point_loads_no_native_machinery() -> None:
    script = (
        "import sys, ggufkit.cli.convert; from ggufkit.convert import convert, OUTTYPE_NAMES; "
        "import ggufkit.convert.upstream; "
        "print(sorted(m for m in ('gguf', 'numpy', 'torch', 'tokenizers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_written_arch_and_count_from_the_first_bytes(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from ggufkit.convert.upstream import written_arch_and_count

    for first_key in ("general.architecture", "general.name"):
        path = tmp_path / f"{first_key}.gguf"
        writer = gguf.GGUFWriter(path, arch="llama")
        if first_key == "general.name":  # not upstream's order: the whole header is read
            writer.kv_data[0] = {"general.name": writer.kv_data[0].pop("general.architecture")}
            writer.add_architecture()
        for i in range(3):
            writer.add_tensor(f"t{i}", np.zeros(4, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        assert written_arch_and_count(path) == ("llama", 3), first_key
