"""`run --image`: what is refused before llama.cpp starts, and the answer through llama-mtmd-cli.

The refusals need no build: the model and projector are small GGUF files written here with the
keys ``check_pair`` reads, the pictures are made with Pillow. The answer needs llama-mtmd-cli,
which ``ggufkit build`` builds with the other tools (those tests are marked ``needs_mtmd``).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_vision
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import InputError, UsageError
from ggufkit.inference import image_chat as chat_module
from ggufkit.inference.image_chat import check_pair, check_picture


def write_gguf(path: Path, arch: str, keys: dict[str, object]) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, str(value))
    writer.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model(directory: Path, width: int = 64, pair: str | None = None) -> Path:
    keys: dict[str, object] = {"qwen2vl.embedding_length": width}
    if pair is not None:
        keys["ggufkit.vision.pair"] = pair
    return write_gguf(directory / "m.gguf", "qwen2vl", keys)


def projector(directory: Path, width: int = 64, name: str = "mmproj-m.gguf") -> Path:
    keys = {"clip.has_vision_encoder": True, "clip.vision.projection_dim": width}
    return write_gguf(directory / name, "clip", keys)


def test_the_pair_named_in_the_header_is_found(tmp_path: Path) -> None:
    mmproj = projector(tmp_path)
    assert check_pair(model(tmp_path, pair=mmproj.name), None) == mmproj


def test_a_text_only_model_given_an_image(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="has no vision projector") as caught:
        check_pair(model(tmp_path), None)
    assert "--mmproj" in (caught.value.hint or "")
    # the pair it names is not there
    with pytest.raises(UsageError, match="mmproj-m.gguf, not found beside it"):
        check_pair(model(tmp_path, pair="mmproj-m.gguf"), None)


def test_an_mmproj_of_another_model(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="writes 32-wide embeddings, the model's are 64 wide"):
        check_pair(model(tmp_path), projector(tmp_path, width=32))


def converted_pair(directory: Path, name: str, *, width: int = 64) -> tuple[Path, Path]:
    """A model and projector with the keys convert writes: each names the other, and both carry
    the checkpoint's ``general.name``."""
    directory.mkdir(parents=True, exist_ok=True)
    model_file, mmproj_file = f"{name}-F16.gguf", f"mmproj-{name}-F16.gguf"
    text = write_gguf(directory / model_file, "qwen2vl", {
        "qwen2vl.embedding_length": width, "general.name": name,
        "ggufkit.vision.role": "model", "ggufkit.vision.pair": mmproj_file,
    })  # fmt: skip
    mmproj = write_gguf(directory / mmproj_file, "clip", {
        "clip.has_vision_encoder": True, "clip.vision.projection_dim": width,
        "general.name": name, "ggufkit.vision.role": "mmproj", "ggufkit.vision.pair": model_file,
    })  # fmt: skip
    return text, mmproj


def test_an_mmproj_of_another_model_as_wide(tmp_path: Path) -> None:
    """Both 64 wide, as the tiny MiniCPM-V and Qwen2-VL are: llama.cpp aborts on such a pair."""
    qwen, _ = converted_pair(tmp_path / "q", "tiny-qwen2vl")
    _, minicpm = converted_pair(tmp_path / "m", "tiny-minicpmv")
    with pytest.raises(UsageError, match="converted from 'tiny-minicpmv'") as caught:
        check_pair(qwen, minicpm)
    assert "mmproj-tiny-qwen2vl-F16.gguf" in (caught.value.hint or "")
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    args = ["run", str(qwen), "--mmproj", str(minicpm), "--image", str(picture), "-p", "What?"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "does not belong to tiny-qwen2vl-F16.gguf" in result.output


def test_a_renamed_pair_still_pairs(tmp_path: Path) -> None:
    text, mmproj = converted_pair(tmp_path, "tiny-qwen2vl")
    moved = text.rename(tmp_path / "renamed.gguf"), mmproj.rename(tmp_path / "projector.gguf")
    assert check_pair(*moved) == moved[1]


def test_the_projector_is_named_by_its_own_type() -> None:
    from ggufkit.convert.vision import converted_together, mmproj_path

    assert mmproj_path(Path("d/X-F16.gguf")) == Path("d/mmproj-X-F16.gguf")
    assert mmproj_path(Path("X-BF16.gguf")).name == "mmproj-X-F16.gguf"
    assert mmproj_path(Path("X-F16.gguf"), "q8_0").name == "mmproj-X-Q8_0.gguf"
    assert mmproj_path(Path("model.gguf"), "q8_0").name == "mmproj-model.gguf"
    assert converted_together("mmproj-X-Q8_0.gguf", "X-F16.gguf")
    assert not converted_together("mmproj-Y-F16.gguf", "X-F16.gguf")


def test_other_files_from_other_models_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without ggufkit's keys (converted elsewhere), a fine-tune may use its base's projector."""
    text = write_gguf(tmp_path / "ft.gguf", "qwen2vl",
                      {"qwen2vl.embedding_length": 64, "general.name": "Fine Tune"})  # fmt: skip
    base = write_gguf(tmp_path / "mmproj-base.gguf", "clip", {
        "clip.has_vision_encoder": True, "clip.vision.projection_dim": 64, "general.name": "Base",
    })  # fmt: skip
    with caplog.at_level("WARNING"):
        assert check_pair(text, base) == base
    assert "mmproj-base.gguf is from 'Base' and ft.gguf from 'Fine Tune'" in caplog.text


def test_files_swapped(tmp_path: Path) -> None:
    text, mmproj = model(tmp_path), projector(tmp_path)
    with pytest.raises(UsageError, match="is an mmproj"):
        check_pair(mmproj, text)
    with pytest.raises(UsageError, match="is not a vision mmproj"):
        check_pair(text, text)


def test_a_readable_picture_is_passed_as_is(tmp_path: Path) -> None:
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    assert check_picture(picture, tmp_path) == picture


def test_a_format_llama_cpp_does_not_read_becomes_png(tmp_path: Path) -> None:
    from PIL import Image

    source = tiny_vision.make_picture(tmp_path / "p.png")
    webp = tmp_path / "p.webp"
    with Image.open(source) as image:
        image.save(webp, format="WEBP", lossless=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copy = check_picture(webp, scratch)
    assert copy.parent == scratch
    with Image.open(copy) as converted, Image.open(source) as original:
        assert converted.format == "PNG"
        assert list(converted.convert("RGB").getdata()) == list(original.getdata())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the picture"),
        (b"not a picture at all", "cannot read .* as a picture"),
        ("truncated", "cannot read .* as a picture"),
    ],
)
def test_an_unreadable_picture(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "p.png"
    if content == "truncated":
        whole = tiny_vision.make_picture(tmp_path / "whole.png").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        check_picture(path, tmp_path)


def test_a_huge_picture_is_refused_from_its_header(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "huge.png"  # 60 megapixels of one bit: a few kB on disk
    Image.new("1", (10_000, 6_000)).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(InputError, match="10000x6000 pixels, over the limit"):
        check_picture(path, tmp_path)


def test_a_picture_over_the_byte_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    monkeypatch.setattr(chat_module, "MAX_PICTURE_BYTES", picture.stat().st_size - 1)
    with pytest.raises(InputError, match="over the limit of"):
        check_picture(picture, tmp_path)


@pytest.mark.parametrize("chat", [False, True])
def test_cli_picture_errors_come_before_any_tool(
    tmp_path: Path, chat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    text, _ = converted_pair(tmp_path, "tiny-qwen2vl")
    monkeypatch.setattr(chat_module, "find_mtmd_cli", pytest.fail)  # never reached
    damaged, huge = tmp_path / "damaged.png", tmp_path / "huge.png"
    damaged.write_bytes(tiny_vision.make_picture(tmp_path / "p.png").read_bytes()[:200])
    Image.new("1", (10_000, 6_000)).save(huge)
    cases = [
        (damaged, "cannot read", "give a PNG, JPEG, BMP or GIF file"),
        (huge, "10000x6000 pixels, over the limit", "scale it down first"),
        (tmp_path / "missing.png", "cannot read the picture", "check the path"),
    ]
    for picture, message, hint in cases:
        args = ["run", str(text), "--image", str(picture), "-p", "What?"]
        result = CliRunner().invoke(cli, [*args, *(["--chat"] if chat else [])])
        assert result.exit_code in (1, 2) and message in result.output, result.output
        assert hint in result.output


def test_a_text_only_checkpoint_folder_given_an_image(tmp_path: Path) -> None:
    from ggufkit.data import embedded_model

    picture = tiny_vision.make_picture(tmp_path / "p.png")
    args = ["run", str(embedded_model("tiny-llama")), "--image", str(picture), "-p", "What?"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "tiny-llama is a text-only checkpoint" in result.output
    assert "drop --image" in result.output
    vlm = tmp_path / "vlm"  # a vision-language checkpoint folder: convert it first
    vlm.mkdir()
    (vlm / "config.json").write_text('{"vision_config": {"hidden_size": 32}}')
    result = CliRunner().invoke(cli, ["run", str(vlm), "--image", str(picture), "-p", "What?"])
    assert result.exit_code == 2 and f"ggufkit convert {vlm}" in result.output


def test_cli_refusals_exit_2_before_any_tool(tmp_path: Path) -> None:
    text = model(tmp_path)
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    runner = CliRunner()
    cases = [
        (["--image", str(picture), "-p", "What?"], "has no vision projector"),
        (["--mmproj", str(projector(tmp_path)), "-p", "What?"], "--mmproj needs --image"),
        (["--image", str(picture), "-p", "a", "-p", "b"], "several -p need --chat"),
    ]
    for extra, message in cases:
        result = runner.invoke(cli, ["run", str(text), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output


# --- the answer, through llama-mtmd-cli -------------------------------------------------------


def converted(factory: pytest.TempPathFactory, name: str) -> Path:
    from ggufkit.convert import convert

    build = {"qwen2vl": tiny_vision.make_qwen2vl, "minicpmv": tiny_vision.make_minicpmv46}[name]
    model_dir = build(factory.mktemp("vlm") / f"tiny-{name}")
    out = model_dir / "gguf" / f"tiny-{name}-F16.gguf"  # inside the checkpoint: its processor
    out.parent.mkdir()
    return convert(model_dir, out).output


@pytest.fixture(scope="module")
def qwen2vl_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted(tmp_path_factory, "qwen2vl")


@pytest.mark.needs_mtmd
@pytest.mark.needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2vl", "minicpmv"])
def test_run_answers_about_a_picture(
    name: str, qwen2vl_pair: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if name == "minicpmv":
        qwen2vl_pair = converted(tmp_path_factory, name)
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    args = ["run", str(qwen2vl_pair), "--image", str(picture), "-p", "What is in the picture?"]
    result = CliRunner().invoke(cli, [*args, "-n", "8", "--temp", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"]
    assert Path(data["mmproj"]).name == f"mmproj-{qwen2vl_pair.name}"
    log = Path(data["log_path"]).read_text(encoding="utf-8")
    assert "mtmd batch encoding done" in log  # llama.cpp encoded the picture


@pytest.mark.needs_mtmd
@pytest.mark.needs_torch
@pytest.mark.slow
def test_llama_cpp_sees_as_many_image_tokens_as_transformers(
    qwen2vl_pair: Path, tmp_path: Path
) -> None:
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from ggufkit.inference.image_chat import find_mtmd_cli

    picture = tiny_vision.make_picture(tmp_path / "p.png")
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(qwen2vl_pair.parent.parent))
    with Image.open(picture) as image:
        grid = processor(images=[image.convert("RGB")])["image_grid_thw"][0]
    expected = int(np.prod(grid.tolist())) // processor.merge_size**2
    mmproj = qwen2vl_pair.with_name("mmproj-" + qwen2vl_pair.name)
    command = [find_mtmd_cli(), "-m", qwen2vl_pair, "--mmproj", mmproj, "--image", picture,
               "-p", "What?", "-n", "1", "--temp", "0", "-v"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    # The grid llama.cpp lays the image out on, logged before encoding: its asynchronous log can
    # lose the last lines when the tool exits at once, so later lines are not waited for.
    sizes = dict(re.findall(r"image_tokens->n([xy]) = (\d+)", done.stderr))
    assert set(sizes) == {"x", "y"}, done.stderr[-3000:]
    assert int(sizes["x"]) * int(sizes["y"]) == expected
