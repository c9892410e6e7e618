"""Vision-language checkpoints: ``convert`` writes the language model and its mmproj together.

The tiny MiniCPM-V 4.6 (tests/tiny_vision.py) converts through the pinned upstream converter twice;
the projector is checked tensor by tensor against the pinned converter run directly, the language
model against the checkpoint's config, and each file names the other.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def minicpmv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vision.make_minicpmv46(tmp_path_factory.mktemp("vlm") / "tiny-minicpmv")


@pytest.fixture(scope="module")
def minicpmv_pair(minicpmv_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vlm-gguf") / "tiny-minicpmv-F16.gguf"
    result = CliRunner().invoke(cli, ["convert", str(minicpmv_dir), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["output"], data["mmproj"]) == (str(out), str(mmproj_path(out)))
    return out


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
def test_convert_writes_the_pair(minicpmv_dir: Path, minicpmv_pair: Path) -> None:
    config = json.loads((minicpmv_dir / "config.json").read_text(encoding="utf-8"))
    text, vision = config["text_config"], config["vision_config"]
    model = read_gguf(minicpmv_pair, max_array_items=4).metadata
    projector = read_gguf(mmproj_path(minicpmv_pair), max_array_items=4).metadata
    assert model["general.architecture"] == "qwen35"
    assert model["qwen35.embedding_length"] == text["hidden_size"]
    # --no-mtp: the text layers only, no next-token-prediction block
    assert model["qwen35.block_count"] == text["num_hidden_layers"]
    assert projector["general.architecture"] == "clip"
    assert projector["clip.projector_type"] == "minicpmv4_6"
    assert projector["clip.vision.embedding_length"] == vision["hidden_size"]
    assert projector["clip.vision.projection_dim"] == text["hidden_size"]
    assert (model[ROLE_KEY], model[PAIR_KEY]) == ("model", mmproj_path(minicpmv_pair).name)
    assert (projector[ROLE_KEY], projector[PAIR_KEY]) == ("mmproj", minicpmv_pair.name)
    assert model["tokenizer.chat_template"] == tiny_vision.CHAT_TEMPLATE
    assert "tokenizer.chat_template" not in projector


@pytest.mark.needs_torch
@pytest.mark.slow
def test_projector_equals_the_pinned_converters(minicpmv_dir: Path, minicpmv_pair: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    reference = tiny_vision.upstream_mmproj(minicpmv_dir, tmp_path / "reference.gguf")
    ours = gguf.GGUFReader(mmproj_path(minicpmv_pair))
    theirs = gguf.GGUFReader(reference)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.tensor_type == ref.tensor_type, mine.name
        assert np.array_equal(np.asarray(mine.data), np.asarray(ref.data)), mine.name
    theirs_keys = set(theirs.fields) - {"general.name"}
    assert theirs_keys <= set(ours.fields)  # ours adds only ggufkit's keys
    assert {k for k in set(ours.fields) - theirs_keys if not k.startswith("GGUF.")} <= {
        "general.name", "ggufkit.version", "ggufkit.engine", ROLE_KEY, PAIR_KEY,
    }  # fmt: skip


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
