"""`verify --image`: llama.cpp's image embeddings (libmtmd) and the logits after the picture
against transformers, for the tiny MiniCPM-V 4.6 and Qwen2-VL.

The oracle is transformers' own vision tower + projector and language model in fp32. The check
must pass on the converted pair and fail on a copy of the mmproj with one projector tensor
perturbed (written in place with gguf-py's reader on a copy). The refusals need no build.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TypeVar

import pytest
import tiny_vision
from click.testing import CliRunner
from test_vision_run import model, projector

from ggufkit.cli import cli
from ggufkit.convert.vision import PAIR_KEY

FAMILIES = ["qwen2vl", "minicpmv"]
T = TypeVar("T")


def needs_vision(test: T) -> T:
    """The build with libmtmd, and torch; slow (each family converted once per module)."""
    marks = (pytest.mark.needs_llamacpp, pytest.mark.needs_mtmd, pytest.mark.needs_torch)
    for mark in (*marks, pytest.mark.slow):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    """name -> (model GGUF, mmproj GGUF, checkpoint), each family converted once."""
    from ggufkit.convert import convert

    built = {}
    for name, build in (
        ("qwen2vl", tiny_vision.make_qwen2vl),
        ("minicpmv", tiny_vision.make_minicpmv46),
    ):
        checkpoint = build(tmp_path_factory.mktemp("vlm") / f"tiny-{name}")
        out = checkpoint / "gguf" / f"tiny-{name}-F16.gguf"
        out.parent.mkdir()
        gguf_file = convert(checkpoint, out).output
        built[name] = (gguf_file, gguf_file.with_name(f"mmproj-{gguf_file.name}"), checkpoint)
    return built


def verify_json(
    gguf_file: Path, mmproj: Path, checkpoint: Path, picture: Path
) -> tuple[int, dict[str, object], str]:
    args = ["verify", str(gguf_file), "--mmproj", str(mmproj), "--image", str(picture)]
    result = CliRunner().invoke(cli, [*args, "--against", str(checkpoint), "--json"])
    data = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, data, result.output


def perturbed_copy(mmproj: Path, out: Path) -> str:
    """A copy of ``mmproj`` with its first projector weight (``mm.*.weight``) scaled by 1.1 in
    place; returns the tensor's name."""
    import gguf
    import numpy as np

    shutil.copyfile(mmproj, out)
    reader = gguf.GGUFReader(str(out), "r+")
    tensor = next(t for t in reader.tensors if re.fullmatch(r"mm\..*\.weight", t.name))
    before = np.array(tensor.data, copy=True)
    tensor.data[...] = (before.astype(np.float32) * 1.1).astype(tensor.data.dtype)
    tensor.data.flush()  # type: ignore[union-attr]
    del reader
    return str(tensor.name)


@needs_vision
@pytest.mark.parametrize("name", FAMILIES)
def test_verify_passes_on_the_converted_pair(
    name: str, pairs: dict[str, tuple[Path, Path, Path]], tmp_path: Path
) -> None:
    gguf_file, mmproj, checkpoint = pairs[name]
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    code, data, output = verify_json(gguf_file, mmproj, checkpoint, picture)
    assert code == 0, output
    embeddings, logits = data["embeddings"], data["logits"]
    assert isinstance(embeddings, dict) and isinstance(logits, dict)
    print(name, "embeddings", embeddings["rel_diff"], "logits", logits["rel_diff"])
    assert data["passed"] is True and data["max_rel_diff"] == 0.01
    assert embeddings["n_tokens"] == {"qwen2vl": 9, "minicpmv": 4}[name]
    assert 0 < embeddings["rel_diff"] < 0.01
    assert logits["n_positions"] > 5 and 0 < logits["rel_diff"] < 0.01
    # the table says the same, with how the positions were made equal
    args = ["verify", str(gguf_file), "--mmproj", str(mmproj), "--image", str(picture)]
    table = CliRunner().invoke(cli, [*args, "--against", str(checkpoint)])
    assert table.exit_code == 0 and "verdict:    PASS" in table.stdout
    if name == "minicpmv":
        assert "transformers' 1-D positions" in table.stdout


@needs_vision
def test_a_sliced_minicpmv_picture_is_compared_slice_by_slice(
    pairs: dict[str, tuple[Path, Path, Path]], tmp_path: Path
) -> None:
    """A wide picture: MiniCPM-V's processor and llama.cpp both cut it into an overview and two
    slices; fed the same pixels, every slice's tokens agree."""
    gguf_file, mmproj, checkpoint = pairs["minicpmv"]
    picture = tiny_vision.make_picture(tmp_path / "wide.png", size=(240, 110))
    code, data, output = verify_json(gguf_file, mmproj, checkpoint, picture)
    assert code == 0, output
    assert str(data["layout"]).count("image of") == 3  # the overview and two slices
    assert "240x110 -> 224x112" in str(data["fitted"])  # the size it is cut from
    embeddings = data["embeddings"]
    assert isinstance(embeddings, dict) and embeddings["n_tokens"] == 11
    assert embeddings["rel_diff"] < 0.01


@needs_vision
@pytest.mark.parametrize("name", FAMILIES)
def test_verify_fails_when_one_projector_tensor_is_perturbed(
    name: str, pairs: dict[str, tuple[Path, Path, Path]], tmp_path: Path
) -> None:
    gguf_file, mmproj, checkpoint = pairs[name]
    bad = perturbed_copy(mmproj, gguf_file.parent / f"bad-{mmproj.name}")
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    code, data, output = verify_json(gguf_file, gguf_file.parent / f"bad-{mmproj.name}",
                                     checkpoint, picture)  # fmt: skip
    print(name, bad, data.get("embeddings", {}), data.get("logits", {}))
    assert code == 1, output
    assert data["passed"] is False
    problems = data["problems"]
    assert isinstance(problems, list)
    assert any("image token" in problem for problem in problems)  # the embeddings
    assert any("after the image" in problem for problem in problems)  # and the logits
    assert "does not see" in output  # the error line on stderr


@needs_vision
def test_a_projector_that_does_not_belong_is_an_error_not_a_crash(
    pairs: dict[str, tuple[Path, Path, Path]], tmp_path: Path
) -> None:
    """Each as wide as the model. A projector converted with another model is refused from the
    pair keys both headers carry (exit 2, nothing loaded); without those keys (a file from
    elsewhere) libmtmd refuses a projector without tensors, and MiniCPM-V's projector frames the
    picture with tokens Qwen2-VL's vocabulary lacks: exit 1 with what is wrong, never a dead
    process."""
    gguf_file, _, checkpoint = pairs["qwen2vl"]
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    foreign = pairs["minicpmv"][1]
    code, _, output = verify_json(gguf_file, foreign, checkpoint, picture)
    assert code == 2 and "does not belong to" in output, output
    unkeyed = tmp_path / "unkeyed" / foreign.name
    unkeyed.parent.mkdir()
    key = PAIR_KEY.encode()
    unkeyed.write_bytes(foreign.read_bytes().replace(key, key[:-1] + b"_"))  # same length
    cases = [
        (projector(tmp_path, width=64), "libmtmd cannot open"),
        (unkeyed, "the mmproj does not belong to this model"),
    ]
    for mmproj, message in cases:
        code, _, output = verify_json(gguf_file, mmproj, checkpoint, picture)
        assert code == 1, output
        assert message in output and "llama.cpp's log:" in output


@needs_vision
def test_a_different_number_of_image_tokens_is_an_error(
    pairs: dict[str, tuple[Path, Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is compared when the checkpoint's processor lays the picture out in another
    number of tokens than llama.cpp (here: the reference made one token short)."""
    from ggufkit.inference import image_verify

    real = image_verify.reference_side

    def one_short(*args: object) -> object:
        embeddings, _ = real(*args)  # type: ignore[arg-type]
        return embeddings[:-1], None

    monkeypatch.setattr(image_verify, "reference_side", one_short)
    gguf_file, mmproj, checkpoint = pairs["qwen2vl"]
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    code, _, output = verify_json(gguf_file, mmproj, checkpoint, picture)
    assert code == 1, output
    assert "as 9 image tokens" in output and "processor as 8" in output


def test_image_without_a_projector_or_for_a_text_model(tmp_path: Path) -> None:
    """Refused before anything is loaded: exit 2 and what to give."""
    text = model(tmp_path)
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (checkpoint / "config.json").write_text(json.dumps(config), encoding="utf-8")
    base = ["verify", str(text), "--against", str(checkpoint)]
    cases = [
        (["--image", str(picture)], "has no vision projector"),
        (["--mmproj", str(projector(tmp_path))], "--mmproj needs --image"),
        (["--image", str(picture), "--mmproj", str(text)], "is not a vision mmproj"),
        (["--image", str(picture), "--lora", str(text)], "do not apply to it"),
        # a pair that fits, against a text-only checkpoint
        (["--image", str(picture), "--mmproj", str(projector(tmp_path))], "knows how to compare"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
