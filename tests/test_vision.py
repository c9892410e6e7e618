"""Vision-language checkpoints: ``convert`` writes the language model and its mmproj together.

The tiny MiniCPM-V 4.6 and Qwen2-VL (tests/tiny_vision.py) convert through the pinned upstream
converter twice each;
the projector is checked tensor by tensor against the pinned converter run directly, the language
model against the checkpoint's config, and each file names the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_vision
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.convert.vision import PAIR_KEY, ROLE_KEY, mmproj_architectures, mmproj_path
from ggufkit.core.errors import UsageError
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.formats.gguf_split import SplitLimits

# family -> (builder, llama.cpp's text architecture, clip.projector_type)
FAMILIES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "minicpmv": (tiny_vision.make_minicpmv46, "qwen35", "minicpmv4_6"),
    "qwen2vl": (tiny_vision.make_qwen2vl, "qwen2vl", "qwen2vl_merger"),
}


@pytest.fixture(scope="module")
def minicpmv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vision.make_minicpmv46(tmp_path_factory.mktemp("vlm") / "tiny-minicpmv")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, minicpmv_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:  # fmt: skip
    """(family, checkpoint, converted model file) for each family, converted by the CLI."""
    name = request.param
    if name == "minicpmv":
        model_dir = minicpmv_dir
    else:
        model_dir = FAMILIES[name][0](tmp_path_factory.mktemp("vlm") / f"tiny-{name}")
    out = tmp_path_factory.mktemp("vlm-gguf") / f"tiny-{name}-F16.gguf"
    result = CliRunner().invoke(cli, ["convert", str(model_dir), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["output"], data["mmproj"]) == (str(out), str(mmproj_path(out)))
    return name, model_dir, out


def test_registry_reads_the_converters_mmproj_classes() -> None:
    names = mmproj_architectures()
    # Registered as MmprojModel directly, through a subclass (Pixtral < Llava), after a comment.
    for arch in ("MiniCPMV4_6ForConditionalGeneration", "Idefics3ForConditionalGeneration",
                 "LlavaForConditionalGeneration", "Gemma3ForConditionalGeneration",
                 "Qwen2VLForConditionalGeneration"):  # fmt: skip
        assert arch in names, arch
    assert not names & {"LlamaForCausalLM", "Qwen3ForCausalLM", "MiniCPM3ForCausalLM"}


@pytest.mark.needs_torch
@pytest.mark.slow
def test_convert_writes_the_pair(family: tuple[str, Path, Path]) -> None:
    name, model_dir, pair_file = family
    _, arch, projector_type = FAMILIES[name]
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text, vision = config["text_config"], config["vision_config"]
    model = read_gguf(pair_file, max_array_items=4).metadata
    projector = read_gguf(mmproj_path(pair_file), max_array_items=4).metadata
    assert model["general.architecture"] == arch
    assert model[f"{arch}.embedding_length"] == text["hidden_size"]
    # MiniCPM-V with --no-mtp: the text layers only, no next-token-prediction block
    assert model[f"{arch}.block_count"] == text["num_hidden_layers"]
    assert projector["general.architecture"] == "clip"
    assert projector["clip.projector_type"] == projector_type
    width = vision.get("embed_dim", vision["hidden_size"])  # Qwen2-VL: hidden_size is the output
    assert projector["clip.vision.embedding_length"] == width
    assert projector["clip.vision.projection_dim"] == text["hidden_size"]
    assert (model[ROLE_KEY], model[PAIR_KEY]) == ("model", mmproj_path(pair_file).name)
    assert (projector[ROLE_KEY], projector[PAIR_KEY]) == ("mmproj", pair_file.name)
    assert model["tokenizer.chat_template"] == tiny_vision.CHAT_TEMPLATE
    assert "tokenizer.chat_template" not in projector


@pytest.mark.needs_torch
@pytest.mark.slow
def test_projector_equals_the_pinned_converters(family: tuple[str, Path, Path],
                                                tmp_path: Path) -> None:  # fmt: skip
    _, model_dir, pair_file = family
    reference = tiny_vision.upstream_mmproj(model_dir, tmp_path / "reference.gguf")
    ours = gguf.GGUFReader(mmproj_path(pair_file))
    theirs = gguf.GGUFReader(reference)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.tensor_type == ref.tensor_type, mine.name
        assert np.array_equal(np.asarray(mine.data), np.asarray(ref.data)), mine.name
    theirs_keys = set(theirs.fields) - {"general.name"}
    assert theirs_keys <= set(ours.fields)  # ours adds only ggufkit's keys
    assert {k for k in set(ours.fields) - theirs_keys if not k.startswith("GGUF.")} <= {
        "general.name", "ggufkit.version", "ggufkit.engine", ROLE_KEY, PAIR_KEY,
        "ggufkit.source.files", "ggufkit.source.sha256",
    }  # fmt: skip
    recorded = read_gguf(mmproj_path(pair_file)).metadata
    weights = {name: hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
               for name in recorded["ggufkit.source.files"]}  # fmt: skip
    assert recorded["ggufkit.source.sha256"] == list(weights.values())


@pytest.mark.needs_torch
@pytest.mark.slow
def test_an_existing_projector_is_kept_without_force(minicpmv_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    mmproj_path(out).write_bytes(b"mine")
    with pytest.raises(UsageError, match="mmproj-m.gguf already exists"):
        convert(minicpmv_dir, out)
    assert mmproj_path(out).read_bytes() == b"mine" and not out.exists()


@pytest.mark.needs_torch
def test_a_split_pair_is_refused(minicpmv_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model and an mmproj"):
        convert(minicpmv_dir, tmp_path / "m.gguf", split=SplitLimits(max_tensors=8))
    assert not list(tmp_path.iterdir())


@pytest.mark.needs_torch
def test_a_vision_config_without_a_projector_converter_is_a_text_model(minicpmv_dir: Path) -> None:
    from ggufkit.convert.vision import is_vision_checkpoint

    config = json.loads((minicpmv_dir / "config.json").read_text(encoding="utf-8"))
    assert is_vision_checkpoint(config, "MiniCPMV4_6ForConditionalGeneration")
    assert not is_vision_checkpoint({**config, "vision_config": None}, config["architectures"][0])
    assert not is_vision_checkpoint(config, "LlamaForCausalLM")


@pytest.mark.needs_torch
@pytest.mark.slow
def test_inspect_shows_the_pair(family: tuple[str, Path, Path], tmp_path: Path) -> None:
    _, _, pair_file = family
    runner = CliRunner()
    shown = runner.invoke(cli, ["inspect", str(pair_file)])
    assert shown.exit_code == 0, shown.output
    last = shown.stdout.splitlines()[-1]
    assert last == (
        f"vision pair:   this file is the model; its mmproj: {mmproj_path(pair_file).name} "
        "(beside it)"
    )
    lone = tmp_path / mmproj_path(pair_file).name
    lone.write_bytes(mmproj_path(pair_file).read_bytes())
    shown = runner.invoke(cli, ["inspect", str(lone), "--json"])
    assert json.loads(shown.stdout)["vision_pair"] == {
        "role": "mmproj", "pair": str(tmp_path / pair_file.name), "pair_role": "model",
        "present": False,
    }  # fmt: skip
