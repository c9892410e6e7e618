"""`bnb --image`: the seed's script on the tiny MiniCPM-V 4.6 and Qwen2-VL, and the GGUF pair beside it.

Oracles: transformers itself (the baseline's answer equals a greedy ``generate`` on inputs built
here from the image processor and the tokenizer, without ggufkit's processor), the saved
``config.json`` (the seed's BitsAndBytesConfig as transformers wrote it), and a reload of each
saved model through transformers alone. ``--repetitions 2`` and a few tokens keep it short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiny_vision
from click.testing import CliRunner

from ggufkit.bnb.image import SEED_SKIP_MODULES, ImageBnbOptions, run_image_bnb
from ggufkit.bnb.image_results import ImageReport, markdown
from ggufkit.bnb.modes import MODES
from ggufkit.cli import cli
from ggufkit.core.errors import InputError, ToolFailedError

TOKENS = 4
RUNS = 2
PROC = Path("/proc/self/status").is_file()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vision.make_picture(tmp_path_factory.mktemp("picture") / "p.png")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {
        "minicpmv": tiny_vision.make_minicpmv46(root / "tiny-minicpmv"),
        "qwen2vl": tiny_vision.make_qwen2vl(root / "tiny-qwen2vl"),
    }


def run(model: Path, picture: Path, **options: Any) -> ImageReport:
    settings: dict[str, Any] = {"runs": RUNS, "max_new_tokens": TOKENS, "device": "cpu",
                                "threads": 1, **options}  # fmt: skip
    return run_image_bnb(model, ImageBnbOptions(image=picture, **settings))


@pytest.mark.needs_bnb
@pytest.mark.needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("family", ["minicpmv", "qwen2vl"])
def test_the_seeds_flow(
    family: str, checkpoints: dict[str, Path], picture: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    model_dir = checkpoints[family]
    modes = [MODES["nf4-dq"], MODES["int8"]]
    report = run(model_dir, picture, modes=modes, save=tmp_path / "saved")
    assert [r.name for r in report.rows] == ["baseline", "nf4-dq", "int8"]
    base = report.rows[0]
    for row in report.rows:
        assert row.ok, (row.name, row.reason)
        assert isinstance(row.answer, str) and row.answer
        assert row.runs == RUNS and 0 < row.tokens <= RUNS * TOKENS  # type: ignore[operator]
        assert row.gen_s and row.gen_s > 0
        assert row.peak_rss_bytes and row.peak_rss_bytes > 2**20
        assert row.footprint_bytes and row.footprint_bytes > 0
    for row in report.rows[1:]:
        assert row.footprint_bytes < base.footprint_bytes  # type: ignore[operator]
        saved = Path(row.saved_to or "")
        config = json.loads((saved / "config.json").read_text(encoding="utf-8"))
        written = config["quantization_config"]
        assert set(SEED_SKIP_MODULES) <= set(written["llm_int8_skip_modules"])
        assert written["llm_int8_threshold"] == 6.0
        if row.name == "nf4-dq":  # the seed's BitsAndBytesConfig, as transformers wrote it
            assert written["bnb_4bit_quant_type"] == "nf4"
            assert written["bnb_4bit_use_double_quant"] is True
            assert written["bnb_4bit_compute_dtype"] == "float16"
            assert written["bnb_4bit_quant_storage"] == "uint8"
        # the saved model reloads through transformers alone, as a bitsandbytes model
        reloaded = AutoModelForImageTextToText.from_pretrained(saved, device_map={"": "cpu"})
        assert any("Linear8bitLt" in type(m).__name__ or "Linear4bit" in type(m).__name__
                   for m in reloaded.modules())  # fmt: skip
        assert (saved / "preprocessor_config.json").is_file()
        assert (saved / "tokenizer.json").is_file()
        del reloaded
    assert report.quantization["nf4-dq"]["bnb_4bit_compute_dtype"] == "float16"
    table = markdown(report)
    assert f"Time ({RUNS} runs)" in table and "nf4-dq" in table


@pytest.mark.needs_bnb
@pytest.mark.needs_torch
@pytest.mark.slow
def test_narrow_layers_are_kept_with_a_note(checkpoints: dict[str, Path], picture: Path) -> None:
    """MiniCPM-V's tiny vision tower is 32 wide: bitsandbytes' CPU 4-bit kernels cannot read it."""
    report = run(checkpoints["minicpmv"], picture, modes=[MODES["nf4"]], runs=1)
    row = report.rows[1]
    assert row.ok, row.reason
    assert any("narrower than 64" in note and "vision_tower" in note for note in row.notes)
    assert row.kept_layers and row.quantized_layers


@pytest.mark.needs_bnb
@pytest.mark.needs_torch
@pytest.mark.slow
def test_the_baseline_answers_as_transformers_does(
    checkpoints: dict[str, Path], picture: Path
) -> None:
    """Qwen2-VL's inputs built here by hand: image processor, placeholders, chat template."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    model_dir = checkpoints["qwen2vl"]
    report = run(model_dir, picture, modes=[], runs=1, compute_dtype="f32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    with Image.open(picture) as image:
        pixels = processor(images=[image.convert("RGB")], return_tensors="pt")
    count = int(pixels["image_grid_thw"][0].prod()) // processor.merge_size**2
    content = "<|vision_start|>" + "<|image_pad|>" * count + "<|vision_end|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content + report.question}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(text, return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        out = model.generate(**ids, **pixels, max_new_tokens=TOKENS, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert report.rows[0].answer == expected


# --- the command line -----------------------------------------------------------------------


def test_cli_takes_the_seeds_defaults_and_each_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ggufkit.cli.bnb as image_module

    seen: list[ImageBnbOptions] = []

    def fake(model: Any, options: ImageBnbOptions) -> ImageReport:
        seen.append(options)
        return ImageReport("m", str(options.image), options.question, "cpu", "cpu", "f16",
                           options.runs, options.max_new_tokens, 0)  # fmt: skip

    monkeypatch.setattr(image_module, "run_image_bnb", fake)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    base = ["bnb", str(model_dir), "--image", str(picture)]
    runner = CliRunner()
    result = runner.invoke(cli, base)
    assert result.exit_code == 0, result.output
    seed = seen[-1]
    assert [m.name for m in seed.modes] == ["nf4-dq"]
    assert (seed.compute_dtype, seed.quant_storage, seed.int8_threshold) == ("f16", "uint8", 6.0)
    assert list(seed.skip_modules) == ["out_proj", "kv_proj", "lm_head"]
    assert seed.runs == 10 and seed.question == "What is in the picture?"
    overrides = ["--modes", "nf4,fp4,int8", "--compute-dtype", "f32", "--quant-storage", "int8",
                 "--skip-modules", "lm_head", "--int8-threshold", "4", "--repetitions", "2",
                 "-p", "Which colour?"]  # fmt: skip
    result = runner.invoke(cli, [*base, *overrides])
    assert result.exit_code == 0, result.output
    given = seen[-1]
    assert [m.name for m in given.modes] == ["nf4", "fp4", "int8"]
    assert (given.compute_dtype, given.quant_storage, given.int8_threshold) == ("f32", "int8", 4.0)
    assert list(given.skip_modules) == ["lm_head"]
    assert given.runs == 2 and given.question == "Which colour?"


def test_a_workspace_records_the_table_with_its_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a workspace: its model, its converted pair as the GGUF row, the result in its manifest."""
    import shutil

    import ggufkit.cli.bnb as image_module
    from ggufkit.bnb.image_results import ImageRow
    from ggufkit.data import embedded_model
    from ggufkit.workspace import init_workspace
    from ggufkit.workspace.manifest import Manifest

    shutil.copytree(embedded_model("tiny-minicpmv"), tmp_path / "vlm")
    init_workspace(tmp_path, "vlm", name="vlm")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    pair = [out / "vlm-F16.gguf", out / "mmproj-vlm-F16.gguf"]
    for path in pair:
        path.write_bytes(b"GGUF")
    asked: list[Path] = []

    def fake(model: Any, options: ImageBnbOptions) -> ImageReport:
        report = ImageReport(str(model.path), str(options.image), options.question, "cpu", "cpu",
                             "f16", options.runs, options.max_new_tokens, 0)  # fmt: skip
        report.add(ImageRow("baseline", kind="transformers", answer="x"))  # no files
        return report

    def fake_row(gguf: Path, mmproj: Path | None, report: ImageReport, **_: Any) -> ImageRow:
        asked.append(gguf)
        return ImageRow("gguf", kind="llama.cpp", answer="x", files=[str(p) for p in pair])

    monkeypatch.setattr(image_module, "run_image_bnb", fake)
    monkeypatch.setattr("ggufkit.compare.image_gguf_row", fake_row)
    monkeypatch.chdir(tmp_path)
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    result = CliRunner().invoke(cli, ["bnb", "--image", str(picture), "--json"])
    assert result.exit_code == 0, result.output
    assert asked == [pair[0]]
    assert [r["name"] for r in json.loads(result.stdout)["rows"]] == ["baseline", "gguf"]
    record = Manifest.load(out / "manifest.json").artefacts["vlm-bnb-image.json"]
    assert record["step"] == "bnb-image" and record["command"][:2] == ["ggufkit", "bnb"]
    assert {i["role"] for i in record["inputs"]} >= {"picture", "model", "mmproj"}
    assert sum(i["role"] == "mmproj" for i in record["inputs"]) == 1


def test_a_huge_picture_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A picture whose header claims 200 megapixels is an InputError in bnb/ (not PIL's
    DecompressionBombError); the CLI refuses one over ggufkit's limit before measuring."""
    from PIL import Image

    import ggufkit.cli.bnb as image_module
    from ggufkit.bnb.vision import image_inputs

    huge = tmp_path / "huge.png"  # one bit a pixel: small on disk
    Image.new("1", (20_000, 10_000)).save(huge)
    with pytest.raises(InputError, match="too large to decode safely") as caught:
        image_inputs(None, "?", huge, "cpu")  # type: ignore[arg-type]  # refused before it is used
    assert caught.value.hint
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"not a picture")
    with pytest.raises(InputError, match="cannot read"):
        image_inputs(None, "?", damaged, "cpu")  # type: ignore[arg-type]
    monkeypatch.setattr(image_module, "run_image_bnb", lambda *_: pytest.fail("measured"))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    large = tmp_path / "large.png"  # 60 megapixels: PIL decodes it, ggufkit's limit refuses it
    Image.new("1", (10_000, 6_000)).save(large)
    result = CliRunner().invoke(cli, ["bnb", str(model_dir), "--image", str(large)])
    assert result.exit_code != 0 and "6000 pixels, over the limit" in result.output, result.output


def test_a_failing_gguf_row_keeps_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-mtmd-cli failing: the GGUF row says so, the rows measured before are still shown."""
    import ggufkit.cli.bnb as image_module
    import ggufkit.inference.image_chat as chat_module
    from ggufkit.bnb.image_results import ImageRow

    def fake(model: Any, options: ImageBnbOptions) -> ImageReport:
        report = ImageReport("m", str(options.image), options.question, "cpu", "cpu", "f16",
                             options.runs, options.max_new_tokens, 0)  # fmt: skip
        report.add(ImageRow("baseline", kind="transformers", answer="a cat"))
        return report

    def chat(*_: Any, **__: Any) -> Any:
        raise ToolFailedError("llama-mtmd-cli exited with status 1")

    monkeypatch.setattr(image_module, "run_image_bnb", fake)
    monkeypatch.setattr(chat_module, "check_pair", lambda model, mmproj: mmproj)
    monkeypatch.setattr(chat_module, "image_chat", chat)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    pair = [tmp_path / "x-F16.gguf", tmp_path / "mmproj-x-F16.gguf"]
    for path in pair:
        path.write_bytes(b"GGUF")
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    args = ["bnb", str(model_dir), "--image", str(picture), "--gguf", str(pair[0]),
            "--mmproj", str(pair[1]), "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    rows = {r["name"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["baseline"]["answer"] == "a cat"
    assert rows["gguf"]["status"] == "failed"
    assert "exited with status 1" in rows["gguf"]["reason"]
    assert "1 row(s) failed: gguf" in result.output


def test_cli_refusals(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    base = ["bnb", str(model_dir)]
    cases = [
        (["--gguf", str(picture)], "--gguf and --mmproj need --image"),
        (["--image", str(picture), "--chunks", "3"], "--chunks do(es) not apply to --image"),
        (["--image", str(picture), "-p", "a", "-p", "b"], "one -p question"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output


@pytest.mark.needs_bnb
@pytest.mark.needs_torch
def test_a_text_only_checkpoint_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    result = CliRunner().invoke(cli, ["bnb", str(tiny_llama_dir), "--image", str(picture)])
    assert result.exit_code == 2, result.output
    assert "not a vision-language checkpoint" in result.output


@pytest.mark.needs_mtmd
@pytest.mark.needs_bnb
@pytest.mark.needs_torch
@pytest.mark.slow
def test_the_table_with_the_gguf_pair(
    checkpoints: dict[str, Path], picture: Path, tmp_path: Path
) -> None:
    from ggufkit.convert import convert

    model_dir = checkpoints["minicpmv"]
    gguf = convert(model_dir, tmp_path / "tiny-minicpmv-F16.gguf").output
    mmproj = gguf.with_name("mmproj-" + gguf.name)
    args = ["bnb", str(model_dir), "--image", str(picture), "--gguf", str(gguf),
            "--repetitions", str(RUNS), "--max-new-tokens", str(TOKENS), "--threads", "1",
            "--device", "cpu", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "ggufkit.bnb-image/1"
    rows = {row["name"]: row for row in data["rows"]}
    assert list(rows) == ["baseline", "nf4-dq", "gguf"]
    pair = rows["gguf"]
    assert pair["kind"] == "llama.cpp" and pair["answer"]
    assert pair["files"] == [str(gguf), str(mmproj)]
    assert pair["size_bytes"] == gguf.stat().st_size + mmproj.stat().st_size
    assert pair["runs"] == RUNS and 0 < pair["tokens"] <= RUNS * TOKENS
    assert pair["gen_s"] > 0
    if PROC:  # llama-mtmd-cli's peak RSS is read from /proc while it runs
        assert pair["peak_rss_bytes"] > 2**20
    table = markdown(ImageReport.from_json(data))
    assert "| gguf" in table and "1." in table
