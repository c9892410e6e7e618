"""ggufkit compare: GGUF types and bitsandbytes modes in one table and one plot."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import tiny
from click.testing import CliRunner

from ggufkit.bnb.results import BnbReport, ModeResult
from ggufkit.cli import cli
from ggufkit.compare import (
    BNB,
    GGUF,
    PLOT_SIZE_INCHES,
    compare,
    compare_reports,
    comparison_table,
)
from ggufkit.core.errors import InputError
from ggufkit.evaluate.plots import PLOT_DPI
from ggufkit.evaluate.results import EvalReport, ModelResult

SHA = "ab" * 32
BENCH = ["--bench-prompt", "16", "--bench-gen", "8", "--bench-reps", "1"]
GENERATE = ["--runs", "1", "--max-new-tokens", "4", "--prompt", "The old town"]


def eval_report(tokens: int = 17775, sha: str = SHA) -> EvalReport:
    def model(name: str, size: int, ppl: float, kld: float | None, tps: float) -> ModelResult:
        return ModelResult(
            name=name, path=f"m-{name}.gguf", type=name, model="tiny", size_bytes=size,
            n_params=1_000_000, bpw=size * 8 / 1e6, is_baseline=name == "F16", ppl=ppl,
            ppl_err=0.5, kld_mean=kld, top1_agreement=None if kld is None else 0.9, tg_tps=tps,
        )  # fmt: skip

    return EvalReport(
        corpus="corpus.txt", corpus_sha256=sha, corpus_tokens=tokens, ctx=64, chunks=4,
        baseline="m-F16.gguf", llama_cpp_commit="0c1e57098",
        models=[model("F16", 2_000_000, 10.0, None, 300.0), model("Q4_0", 600_000, 10.6, 0.05, 500.0)],
    )  # fmt: skip


def bnb_report(tokens: int = 17775, sha: str = SHA) -> BnbReport:
    return BnbReport(
        model="tiny", device="cpu", device_name="cpu", compute_dtype="f32", corpus="corpus.txt",
        corpus_sha256=sha, corpus_tokens=tokens, ctx=64, chunks=4, prompts=["a"], runs=1,
        max_new_tokens=4, seed=0,
        results=[
            ModeResult(name="baseline", footprint_bytes=4_000_000, bpw=32.0, ppl=10.01, tokens_per_s=40.0),
            ModeResult(name="nf4", footprint_bytes=800_000, bpw=6.4, ppl=10.9, kld_mean=0.07,
                       top1_agreement=0.8, mean_abs_dlogit=0.1, tokens_per_s=20.0),
            ModeResult(name="fp4-dq", status="skipped", reason="no layer left to quantize"),
        ],
    )  # fmt: skip


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def files(tmp_path: Path, **kwargs: Any) -> tuple[Path, Path]:
    gguf = {k.removeprefix("gguf_"): v for k, v in kwargs.items() if k.startswith("gguf_")}
    hf = {k.removeprefix("bnb_"): v for k, v in kwargs.items() if k.startswith("bnb_")}
    return (
        write(tmp_path, "eval.json", eval_report(**gguf).to_json()),
        write(tmp_path, "bnb.json", bnb_report(**hf).to_json()),
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_table_has_both_families(tmp_path: Path) -> None:
    result = compare(*files(tmp_path))
    assert [(r.family, r.name) for r in result.rows] == [
        (GGUF, "F16"),
        (GGUF, "Q4_0"),
        (BNB, "baseline"),
        (BNB, "nf4"),
    ]  # skipped modes are left out
    table = comparison_table(result)
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "Family"
    # ± is a 95 % half-width in both families (1.96 standard errors), and the notes say so
    assert any("| GGUF" in line and "Q4_0" in line and "10.6000 ± 0.9800" in line for line in lines)
    assert "± on PPL: the half-width of a 95 % interval" in table
    assert any("| bnb" in line and "nf4" in line and "80.0%" in line for line in lines)
    assert "585.94 KiB" in table  # the Q4_0 file, 600,000 bytes
    assert not any("tokenizers differ" in n or "different corpora" in n for n in result.notes)
    # the files read back into the typed reports they were written from
    assert compare_reports(eval_report(), bnb_report(), *files(tmp_path)) == result


def test_notes_say_when_numbers_do_not_compare(tmp_path: Path) -> None:
    tokens = compare(*files(tmp_path, bnb_tokens=16000)).notes
    assert any("tokenizers differ" in n and "16000" in n for n in tokens)
    assert not any("tokenizers" in n for n in compare(*files(tmp_path, bnb_tokens=17776)).notes)
    corpora = compare(*files(tmp_path, bnb_sha="cd" * 32)).notes
    assert any("different corpora" in n for n in corpora)


def test_plain_lists_are_accepted(tmp_path: Path) -> None:
    gguf = write(tmp_path, "e.json", [m.to_json() for m in eval_report().models])
    hf = write(tmp_path, "b.json", [r.to_json() for r in bnb_report().results])
    assert len(compare(gguf, hf).rows) == 4


def test_bad_inputs(tmp_path: Path) -> None:
    good_eval, good_bnb = files(tmp_path)
    with pytest.raises(InputError, match="is missing"):
        compare(tmp_path / "none.json", good_bnb)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        compare(good_eval, tmp_path / "bad.json")
    with pytest.raises(InputError, match="ggufkit bnb --json"):
        compare(good_eval, write(tmp_path, "x.json", {"models": []}))
    with pytest.raises(InputError, match="malformed eval result"):
        compare(write(tmp_path, "m.json", {"models": [{"name": "Q4_0"}]}), good_bnb)
    skipped = bnb_report()
    skipped.results = skipped.results[2:]
    with pytest.raises(InputError, match="no bitsandbytes result"):
        compare(good_eval, write(tmp_path, "s.json", skipped.to_json()))


def test_cli_table_json_and_plot(tmp_path: Path) -> None:
    eval_file, bnb_file = files(tmp_path)
    plot = tmp_path / "compare.png"
    runner = CliRunner()
    args = ["compare", "--eval", str(eval_file), "--bnb", str(bnb_file)]
    result = runner.invoke(cli, [*args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "| GGUF" in result.stdout and "| bnb" in result.stdout
    expected = (int(PLOT_SIZE_INCHES[0] * PLOT_DPI), int(PLOT_SIZE_INCHES[1] * PLOT_DPI))
    assert png_size(plot) == expected and plot.stat().st_size > 20_000
    data = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)
    assert {r["family"] for r in data["rows"]} == {GGUF, BNB}
    jpg = runner.invoke(cli, [*args, "--plot", str(tmp_path / "x.jpg")])
    assert jpg.exit_code == 2 and ".png" in jpg.output
    missing = runner.invoke(
        cli, ["compare", "--eval", str(tmp_path / "no.json"), "--bnb", str(bnb_file)]
    )
    assert missing.exit_code == 1 and "is missing" in missing.output


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.needs_bnb
@pytest.mark.slow
def test_real_eval_and_bnb_agree_on_the_baseline(
    tiny_llama_f16_gguf: Path, tiny_llama_gqa_dir: Path, tmp_path: Path
) -> None:
    """The same corpus windows through llama.cpp (f16) and transformers (f32) give the same
    perplexity, so the two families compare in kind."""
    common = ["--corpus", str(tiny.CORPUS), "--ctx", "64", "--chunks", "4", "-t", "1", "--json"]
    runner = CliRunner()
    gguf = runner.invoke(
        cli,
        ["eval", str(tiny_llama_f16_gguf), *common, *BENCH],
    )
    assert gguf.exit_code == 0, gguf.output
    hf = runner.invoke(
        cli,
        ["bnb", str(tiny_llama_gqa_dir), "--modes", "nf4,int8", *GENERATE, *common],
    )
    assert hf.exit_code == 0, hf.output
    eval_file = write(tmp_path, "eval.json", json.loads(gguf.stdout))
    bnb_file = write(tmp_path, "bnb.json", json.loads(hf.stdout))
    result = compare(eval_file, bnb_file)
    rows = {(r.family, r.name): r for r in result.rows}
    f16, base = rows[(GGUF, "F16")], rows[(BNB, "baseline")]
    assert f16.ppl and base.ppl and abs(f16.ppl - base.ppl) / base.ppl < 0.005
    assert not any("tokenizers differ" in n for n in result.notes)
    assert rows[(BNB, "nf4")].size_bytes < base.size_bytes  # type: ignore[operator]
    plot = tmp_path / "c.png"
    assert (
        CliRunner()
        .invoke(
            cli, ["compare", "--eval", str(eval_file), "--bnb", str(bnb_file), "--plot", str(plot)]
        )
        .exit_code
        == 0
    )
    assert plot.stat().st_size > 20_000
