"""A vision-language workspace: the tiny MiniCPM-V 4.6 converted into its model and projector,
quantized (the language model only), shown by status, and published with its card to the fake Hub
(tests/hubserver.py, as tests/test_publish.py uses it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import tiny_vision
from click.testing import CliRunner
from hubserver import FakeHub
from test_upload import TOKEN, hub  # noqa: F401  (the fixture)

from ggufkit.cli import cli
from ggufkit.convert.vision import PAIR_KEY
from ggufkit.formats.gguf_reader import read_gguf

NAME = "tiny-minicpmv"
MODEL, MMPROJ, Q8 = f"{NAME}-F16.gguf", f"mmproj-{NAME}-F16.gguf", f"{NAME}-Q8_0.gguf"
MMPROJ_Q8 = f"mmproj-{NAME}-Q8_0.gguf"  # the projector in q8_0: named by its own type


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vision.make_minicpmv46(tmp_path_factory.mktemp("vlm") / NAME)


def invoke(*args: str) -> str:
    done = CliRunner().invoke(cli, list(args))
    assert done.exit_code == 0, (args, done.output)
    return done.stdout


def tensor_types(path: Path) -> set[str]:
    return {t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}


def states() -> dict[str, str]:
    from ggufkit.workspace import Workspace

    workspace = Workspace.find()
    assert workspace is not None
    return {state.label: state.state for state in workspace.status()}


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_a_vision_workspace_end_to_end(
    checkpoint: Path,
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import ModelCard

    shutil.copytree(checkpoint, tmp_path / NAME)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    invoke("init", f"./{NAME}", "--types", "q8_0")
    invoke("quantize")  # converts first: both files, then the language model's type
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted([MODEL, MMPROJ, Q8])
    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    assert manifest[MODEL]["mmproj"] == MMPROJ
    projector = manifest[MMPROJ]
    assert projector["step"] == "mmproj" and projector["model"] == MODEL
    assert projector["options"]["outtype"] == "f16"
    assert projector["inputs"] == manifest[MODEL]["inputs"]  # the same checkpoint files
    assert projector["command"] == manifest[MODEL]["command"]
    assert tensor_types(out / MMPROJ) <= {"F16", "F32"}
    # the quantized model still names its projector, which stays as converted
    assert read_gguf(out / Q8, max_array_items=0).metadata[PAIR_KEY] == MMPROJ
    assert states() == dict.fromkeys(["convert", "convert mmproj", "quantize q8_0"], "up to date")
    assert f"convert mmproj   out/{MMPROJ}" in invoke("status")

    # a missing projector is made again, though the model is up to date
    (out / MMPROJ).unlink()
    assert states()["convert mmproj"] == "missing"
    sha = manifest[MODEL]["sha256"]
    invoke("convert")
    assert (out / MMPROJ).is_file() and states()["convert mmproj"] == "up to date"
    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    assert manifest[MODEL]["sha256"] == sha  # the same model, converted again

    # mmproj_type: the projector in q8_0, named so; the old one is removed
    config = tmp_path / "ggufkit.toml"
    config.write_text(config.read_text().replace('# mmproj_type = "f16"', 'mmproj_type = "q8_0"'))
    assert states()["convert"] == "out of date"
    invoke("convert")
    assert "Q8_0" in tensor_types(out / MMPROJ_Q8) and not (out / MMPROJ).exists()
    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    assert manifest[MODEL]["mmproj"] == MMPROJ_Q8
    assert manifest[MMPROJ_Q8]["options"]["outtype"] == "q8_0" and MMPROJ not in manifest
    invoke("quantize")  # the model's header names its new projector: its types follow
    for name in (MODEL, Q8):
        assert read_gguf(out / name, max_array_items=0).metadata[PAIR_KEY] == MMPROJ_Q8

    dry = invoke("publish", "me/tiny-vlm-GGUF", "--dry-run", "--base-model", "me/tiny-vlm")
    head, card_text = dry.split("\n--- README.md ---\n")
    assert all(name in head for name in (MODEL, MMPROJ_Q8, Q8))
    card = ModelCard(card_text)
    assert card.data.pipeline_tag == "image-text-to-text" and "multimodal" in card.data.tags
    rows = [line for line in card.text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [MODEL, Q8]  # the projector is not a row
    assert f"`{MMPROJ_Q8}` (Q8_0, " in card.text
    pictures = card.text.split("## Pictures")[1]
    assert f"llama-mtmd-cli -m {Q8} --mmproj {MMPROJ_Q8} --image picture.png" in pictures
    assert f"ggufkit run {Q8} --mmproj {MMPROJ_Q8} --image picture.png" in pictures
    assert f"hf download me/tiny-vlm-GGUF {Q8} {MMPROJ_Q8} --local-dir ." in pictures
    assert "llama-server -hf me/tiny-vlm-GGUF:Q8_0" in pictures
    recorded = json.loads((out / "manifest.json").read_text())["artefacts"][MMPROJ_Q8]
    assert f"- vision projector: `{MMPROJ_Q8}` (Q8_0, " in card.text
    assert f"sha256 `{recorded['sha256']}`" in card.text

    invoke("publish", "me/tiny-vlm-GGUF", "--token", TOKEN, "--base-model", "me/tiny-vlm")
    files = hub.files("me/tiny-vlm-GGUF")
    for name in (MODEL, MMPROJ_Q8, Q8):
        assert files[name] == (out / name).read_bytes()

    with (out / MMPROJ_Q8).open("ab") as handle:  # a changed projector is not published
        handle.write(b"\0" * 32)
    changed = CliRunner().invoke(cli, ["publish", "me/tiny-vlm-GGUF", "--dry-run"])
    assert changed.exit_code == 1 and f"{MMPROJ_Q8} is changed since it was made" in changed.output


def test_a_text_model_refuses_a_projector_type(tmp_path: Path) -> None:
    from ggufkit.data import embedded_model

    args = ["convert", str(embedded_model("tiny-llama")), "-o", str(tmp_path / "t.gguf")]
    done = CliRunner().invoke(cli, [*args, "--mmproj-type", "q8_0"])
    assert done.exit_code == 2, done.output
    assert "--mmproj-type applies to vision-language checkpoints" in done.output
    assert not (tmp_path / "t.gguf").exists()


def test_mmproj_type_in_ggufkit_toml_is_checked(tmp_path: Path) -> None:
    from ggufkit.core.errors import WorkspaceError
    from ggufkit.workspace.config import WorkspaceConfig

    config = tmp_path / "ggufkit.toml"
    config.write_text('source = "m"\nname = "m"\nmmproj_type = "q4_0"\n')
    with pytest.raises(WorkspaceError, match="`mmproj_type` 'q4_0' is unknown"):
        WorkspaceConfig.from_toml(config)
    config.write_text('source = "m"\nname = "m"\nmmproj_type = "q8_0"\n')
    assert WorkspaceConfig.from_toml(config).mmproj_type == "q8_0"


@pytest.mark.needs_torch
@pytest.mark.slow
def test_convert_mmproj_type(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / MODEL
    data = json.loads(
        invoke("convert", str(checkpoint), "-o", str(out), "--mmproj-type", "Q8_0", "--json")
    )
    assert data["mmproj"] == str(tmp_path / MMPROJ_Q8)
    assert "Q8_0" in tensor_types(tmp_path / MMPROJ_Q8) and tensor_types(out) <= {"F16", "F32"}
    assert read_gguf(out, max_array_items=0).metadata[PAIR_KEY] == MMPROJ_Q8
    assert read_gguf(tmp_path / MMPROJ_Q8, max_array_items=0).metadata[PAIR_KEY] == MODEL
