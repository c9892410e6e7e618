"""`ggufkit eval` and `ggufkit bench`: output parsing, corpus planning, reports, and real runs."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import EvaluationError, InputError, UsageError
from ggufkit.evaluate import EvalReport, ModelResult, ppl
from ggufkit.evaluate.report import PLOT_SIZE_PX, eval_table, plot_eval
from ggufkit.evaluate.speed import parse_bench_json
from ggufkit.llamacpp.runner import ToolResult

PPL_HEAD = (
    "0.00.377.159 I perplexity: calculating perplexity over 3 chunks, n_ctx=128, "
    "batch_size=2048, n_seq=16\n"
)
PPL_RUN = PPL_HEAD + (
    "0.00.590.000 I perplexity: 0.21 seconds per pass - ETA 0.00 minutes\n"
    "[1]914.3017,[2]910.8615,[3]881.3554,\n"
)
PPL_FINAL = "0.01.067.129 I Final estimate: PPL = 881.3554 +/- 25.46360\n"

KLD_HEAD = (
    "0.00.126.437 I kl_divergence: computing over 2 chunks, n_ctx=128, batch_size=2048, n_seq=16\n"
    "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
    "              Δp RMS            Same top p\n"
    "   1     973.7564 ±   66.0166       0.06300 ±    0.02986       0.01820 ±    0.00040"
    "     0.036 ±  0.005 %    44.444 ±  6.311 %\n"
)
KLD_ROW2 = (
    "   2     955.2738 ±   48.9218       0.04761 ±    0.01895       0.01533 ±    0.00036"
    "     0.036 ±  0.004 %    54.762 ±  4.452 %\n"
)
KLD_STATS = """
====== Perplexity statistics ======
Mean PPL(Q)                   : 955.156356 ±  24.786324
Mean PPL(base)                : 924.535695 ±  25.463609
Cor(ln(PPL(Q)), ln(PPL(base))):  98.71%
Mean ln(PPL(Q)/PPL(base))     :   0.032589 ±   0.004262
Mean PPL(Q)/PPL(base)         :   1.033120 ±   0.004403
Mean PPL(Q)-PPL(base)         :  30.620661 ±   4.103522
====== KL divergence statistics ======
Mean    KLD:   0.014678 ±   0.000196
Maximum KLD:   0.033999
99.9%   KLD:   0.033416
99.0%   KLD:   0.026824
Median  KLD:   0.014245
====== Token probability statistics ======
RMS Δp    :  0.029 ± 0.001 %
Same top p: 53.968 ± 2.222 %
"""


# --- parsing llama-perplexity ---------------------------------------------------------------


def test_parse_perplexity_final_estimate() -> None:
    result = ppl.parse_perplexity(PPL_RUN + PPL_FINAL)
    assert result is not None
    assert (result.ppl, result.ppl_err, result.chunks, result.ctx) == (881.3554, 25.4636, 3, 128)


def test_parse_perplexity_reads_only_the_final_estimate() -> None:
    # Running values are not the result: without the final line there is none (the patched
    # llama-perplexity drains its log, so the line is never lost).
    assert ppl.parse_perplexity(PPL_RUN) is None
    assert ppl.parse_perplexity("llama_model_load: error loading model") is None


def test_parse_perplexity_nan_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="invalid logits"):
        ppl.parse_perplexity(PPL_HEAD + "Final estimate: PPL = nan +/- nan\n")


def test_parse_kld_statistics() -> None:
    result = ppl.parse_kld(KLD_HEAD + KLD_ROW2 + KLD_STATS)
    assert result is not None
    assert result.ppl == 955.156356 and result.ppl_err == 24.786324
    assert result.kld_mean == 0.014678 and result.kld_err == 0.000196
    assert result.kld_max == 0.033999 and result.kld_p99 == 0.026824
    assert result.kld_median == 0.014245
    assert result.top1_agreement == pytest.approx(0.53968)
    assert result.top1_err == pytest.approx(0.02222)
    assert result.delta_ppl == 30.620661 and result.delta_ppl_err == 4.103522  # paired


def test_whole_corpus_intervals_are_95_percent_half_widths() -> None:
    """Whole-corpus mode fills the same fields as --target-error: 95 % half-widths, paired ΔPPL."""
    from ggufkit.evaluate.results import fill_whole_corpus_intervals

    kld = ppl.parse_kld(KLD_HEAD + KLD_ROW2 + KLD_STATS)
    assert kld is not None
    m = ModelResult("Q4_0", "q.gguf", "Q4_0", "7B", 1, 1, 4.5, ppl=kld.ppl, ppl_err=kld.ppl_err)
    m.kld_mean, m.kld_err, m.top1_agreement, m.top1_err = (
        kld.kld_mean,
        kld.kld_err,
        kld.top1_agreement,
        kld.top1_err,
    )
    fill_whole_corpus_intervals(m, kld.delta_ppl, kld.delta_ppl_err)
    assert m.delta_ppl == 30.620661
    assert m.delta_ppl_ci == pytest.approx(1.959964 * 4.103522, rel=1e-6)
    assert m.ppl_ci == pytest.approx(1.959964 * 24.786324, rel=1e-6)
    assert m.kld_ci == pytest.approx(1.959964 * 0.000196, rel=1e-6)
    assert m.top1_ci == pytest.approx(1.959964 * 0.02222, rel=1e-6)


def test_parse_kld_needs_the_statistics() -> None:
    assert ppl.parse_kld(KLD_HEAD + KLD_ROW2) is None


def test_parse_kld_survives_a_lossy_decode_of_plus_minus() -> None:
    mangled = (KLD_HEAD + KLD_ROW2 + KLD_STATS).replace("±", "\ufffd\ufffd")
    result = ppl.parse_kld(mangled)
    assert result is not None and result.kld_mean == 0.014678


def _fake_runs(monkeypatch: pytest.MonkeyPatch, outputs: list[str]) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run_tool(args: list[str], **_: object) -> ToolResult:
        calls.append(list(args))
        return ToolResult(list(args), 0, outputs[len(calls) - 1], Path("/tmp/fake.log"), 0.1)

    monkeypatch.setattr(ppl, "run_tool", fake_run_tool)
    monkeypatch.setattr(ppl, "find_tool", lambda name: Path("/bin") / name)
    return calls


def test_kl_divergence_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_runs(monkeypatch, [KLD_HEAD + KLD_ROW2 + KLD_STATS])
    result = ppl.kl_divergence(Path("q.gguf"), Path("base.kld"), ctx=128)
    assert result.kld_mean == 0.014678
    assert len(calls) == 1
    assert calls[0][-3:] == ["--kl-divergence-base", "base.kld", "--kl-divergence"]


def test_unparseable_output_quotes_the_tail_without_running_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_runs(monkeypatch, ["something unexpected\nlast words\n", PPL_RUN + PPL_FINAL])
    with pytest.raises(EvaluationError) as caught:
        ppl.perplexity(Path("m.gguf"), Path("c.txt"), ctx=128)
    assert "last words" in str(caught.value) and "/tmp/fake.log" in str(caught.value)
    assert len(calls) == 1


def test_short_corpus_reported_by_the_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    short = (
        "perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512\n"
        "perplexity: the data file you provided tokenizes to only 300 tokens\n"
    )
    _fake_runs(monkeypatch, [short])
    with pytest.raises(InputError, match="too short: it has 300 tokens"):
        ppl.perplexity(Path("m.gguf"), Path("c.txt"), ctx=512)


# --- planning the corpus ------------------------------------------------------------------


def test_plan_uses_all_chunks_by_default() -> None:
    plan = ppl.plan(17776, ctx=None, chunks=None, n_ctx_train=4096, kld=True, corpus=Path("c"))
    assert (plan.ctx, plan.chunks) == (512, 34)
    assert (
        ppl.plan(17776, ctx=128, chunks=5, n_ctx_train=None, kld=True, corpus=Path("c")).chunks == 5
    )


def test_plan_lowers_a_default_ctx_but_not_an_explicit_one() -> None:
    plan = ppl.plan(600, ctx=None, chunks=None, n_ctx_train=2048, kld=False, corpus=Path("c"))
    assert plan.ctx == 288 and plan.chunks == 2
    with pytest.raises(UsageError, match="needs at least 1024") as caught:
        ppl.plan(600, ctx=512, chunks=None, n_ctx_train=2048, kld=False, corpus=Path("c"))
    assert caught.value.hint == "use --ctx 288 or less, or a longer --corpus"
    with pytest.raises(UsageError, match="has 20 tokens") as caught:
        ppl.plan(20, ctx=None, chunks=None, n_ctx_train=None, kld=False, corpus=Path("c"))
    assert caught.value.hint == "give a longer --corpus"


def test_plan_needs_enough_scored_tokens_for_kld() -> None:
    with pytest.raises(UsageError, match="KL-divergence needs") as caught:
        ppl.plan(4000, ctx=64, chunks=2, n_ctx_train=None, kld=True, corpus=Path("c"))
    assert caught.value.hint == "use --chunks 4 or more"
    assert ppl.plan(4000, ctx=64, chunks=2, n_ctx_train=None, kld=False, corpus=Path("c"))


# --- llama-bench JSON -----------------------------------------------------------------------


def test_parse_bench_json() -> None:
    text = json.dumps(
        [
            {"n_prompt": 32, "n_gen": 0, "n_threads": 2, "avg_ts": 1000.0, "stddev_ts": 5.0,
             "samples_ts": [995.0, 1005.0], "backends": "CPU", "model_type": "llama ?B Q4_0"},
            {"n_prompt": 0, "n_gen": 16, "n_threads": 2, "avg_ts": 250.0, "stddev_ts": 0.0,
             "samples_ts": [250.0]},
        ]
    )  # fmt: skip
    pp, tg = parse_bench_json("warming up\n" + text, "m.gguf")
    assert (pp.test, pp.kind, pp.repetitions, pp.ms_per_token) == ("pp32", "pp", 2, 1.0)
    assert (tg.test, tg.kind, tg.threads, tg.ms_per_token) == ("tg16", "tg", 2, 4.0)
    with pytest.raises(EvaluationError, match="no JSON"):
        parse_bench_json("error: failed to load model", "m.gguf")


# --- reports --------------------------------------------------------------------------------


def _report() -> EvalReport:
    def model(name: str, size: int, **values: Any) -> ModelResult:
        path, bpw = f"/m/{name}.gguf", size * 8 / 1000
        return ModelResult(name, path, name, "7B", size, 1000, bpw, threads=4, **values)

    speed = {"pp_tps": 80.0, "pp_tps_std": 2.0, "tg_tps_std": 0.5}

    return EvalReport(
        corpus="/c/wiki.txt",
        corpus_sha256="0" * 64,
        corpus_tokens=10000,
        ctx=512,
        chunks=19,
        baseline="/m/F16.gguf",
        llama_cpp_commit="abc",
        models=[
            model("F16", 2000, is_baseline=True, ppl=5.9066, ppl_err=0.03, tg_tps=8.0, **speed),
            model(
                "Q8_0",
                1062,
                ppl=5.9102,
                ppl_err=0.03,
                kld_mean=0.0011,
                top1_agreement=0.981,
                delta_ppl=0.0036,
                delta_ppl_ci=0.01,
                tg_tps=12.5,
                **speed,
            ),
            model(
                "Q4_0",
                562,
                ppl=6.1565,
                ppl_err=0.04,
                kld_mean=0.0412,
                top1_agreement=0.902,
                tg_tps=20.0,
                **speed,
            ),
        ],
        bench={"n_prompt": 512, "n_gen": 128, "repetitions": 3},
    )


def table_cells(table: str) -> dict[str, list[str]]:
    """Measure -> cells of a guide-shaped Markdown table."""
    rows = {}
    for line in table.splitlines()[2:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[1]] = cells[2:]
    return rows


def numbers_agree(report: dict[str, object], table: str) -> None:
    """Every number in the table is the JSON's number, formatted; "±" is the 95 % half-width."""
    rows = table_cells(table)
    models = report["models"]
    assert isinstance(models, list)

    def pm(m: dict[str, Any], key: str, ci: str, err: str, spec: str, scale: float = 1) -> str:
        half = m[ci] if m.get(ci) is not None else m[err] and 1.959963984540054 * m[err]
        text = f"{scale * m[key]:{spec}}"
        return text if half is None else f"{text} ± {scale * half:{spec}}"

    for cell, m in zip(rows["perplexity"], models, strict=True):
        assert cell == pm(m, "ppl", "ppl_ci", "ppl_err", ".4f")
    for name, key, ci, err, spec, scale in (
        ("KL-divergence", "kld_mean", "kld_ci", "kld_err", ".6f", 1),
        ("same top token %", "top1_agreement", "top1_ci", "top1_err", ".2f", 100),
    ):
        for cell, m in zip(rows[name], models, strict=True):
            assert cell == ("(baseline)" if m["is_baseline"] else pm(m, key, ci, err, spec, scale))
    for cell, m in zip(rows["bits/weight"], models, strict=True):
        assert cell == f"{m['bpw']:.2f}"
    for key in (key for key in rows if key.startswith("gen tok/s")):
        for cell, m in zip(rows[key], models, strict=True):
            assert cell.startswith(
                f"{m['tg_tps']:.2f}" if m["tg_tps"] < 100 else f"{m['tg_tps']:.0f}"
            )
    assert not any(key.startswith("ms/tok") for key in rows)  # it only repeated gen tok/s


def test_table_in_the_guide_shape_and_json_agree() -> None:
    report = _report()
    table = eval_table(report)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["Model", "Measure", "F16", "Q8_0", "Q4_0"]
    rows = table_cells(table)
    assert rows["gen tok/s @ 4th"] == ["8.00 ± 0.50", "12.50 ± 0.50", "20.00 ± 0.50"]
    assert rows["ΔPPL vs baseline"] == ["(baseline)", "+0.0036 ± 0.0100", "—"]
    assert "± on quality: the half-width of a 95 % interval" in table
    assert "± on tok/s: the standard deviation over 3 llama-bench runs" in table
    assert rows["file size"] == ["1.95 KiB", "1.04 KiB", "562 B"]
    data = json.loads(json.dumps(report.to_json()))
    numbers_agree(data, table)
    assert EvalReport.from_json(data) == report


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    out = plot_eval(_report(), tmp_path / "eval.png")
    assert png_size(out) == PLOT_SIZE_PX
    assert out.stat().st_size > 10_000  # points, labels and axes, not an empty canvas
    with pytest.raises(UsageError, match=".png"):
        plot_eval(_report(), tmp_path / "eval.jpg")


def test_the_plot_caption_says_what_the_bars_mean(tmp_path: Path) -> None:
    from ggufkit.evaluate.plots import eval_caption

    report = _report()
    text = eval_caption(report)
    assert "Corpus wiki.txt: 19 chunks of 512 tokens" in text
    assert "95 % intervals, paired against F16.gguf" in text and "Lower is better" in text
    assert "per-token standard errors" in text  # whole-corpus mode says how they were made
    assert "±1 standard deviation over 3 runs, 4 threads" in text
    report.sequential = {"target": 0.01}
    assert "Student t over the chunks" in eval_caption(report)
    alone = EvalReport.from_json({**report.to_json(), "baseline": None, "sequential": None})
    alone.models = alone.models[:1]
    assert "unpaired: no baseline" in eval_caption(alone)
    assert png_size(plot_eval(alone, tmp_path / "alone.png")) == PLOT_SIZE_PX


def test_missing_corpus_is_an_input_error(tmp_path: Path) -> None:
    """A missing input file exits 1, be it the corpus or a GGUF (docs/options.md)."""
    result = CliRunner().invoke(cli, ["eval", "x.gguf", "--corpus", str(tmp_path / "none.txt")])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


# --- real runs on the tiny model ------------------------------------------------------------

CTX, CHUNKS = 128, 6
BENCH = ["--prompt-tokens", "16", "--gen-tokens", "8", "--repetitions", "1", "-t", "1"]


@pytest.fixture(scope="module")
def tiny_quants(
    tiny_llama_f16_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from ggufkit.quantize import quantize

    outdir = tmp_path_factory.mktemp("quants")
    results = quantize(tiny_llama_f16_gguf, ["q8_0", "q4_0"], outdir=outdir)
    return {"f16": tiny_llama_f16_gguf, **{r.type.lower(): r.output for r in results}}


@pytest.fixture(scope="module")
def eval_run(
    tiny_quants: dict[str, Path], corpus_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, object], Path]:
    plot = tmp_path_factory.mktemp("plot") / "eval.png"
    args = ["eval", str(tiny_quants["f16"]), str(tiny_quants["q8_0"]), str(tiny_quants["q4_0"])]
    args += ["--corpus", str(corpus_path), "--ctx", str(CTX), "--chunks", str(CHUNKS)]
    result = CliRunner().invoke(cli, [*args, *BENCH, "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), plot


def by_type(report: dict[str, object]) -> dict[str, dict[str, object]]:
    models = report["models"]
    assert isinstance(models, list)
    return {m["type"]: m for m in models}


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_eval_measures_real_numbers(eval_run: tuple[dict[str, object], Path]) -> None:
    report, plot = eval_run
    models = by_type(report)
    assert list(models) == ["F16", "Q8_0", "Q4_0"]
    assert report["ctx"] == CTX and report["chunks"] == CHUNKS
    f16, q8, q4 = models["F16"], models["Q8_0"], models["Q4_0"]
    assert f16["is_baseline"] and f16["kld_mean"] is None
    for m in models.values():
        assert m["size_bytes"] == Path(str(m["path"])).stat().st_size
        assert 1 < m["ppl"] < 1e6 and m["ppl_err"] > 0
        assert m["pp_tps"] > 0 and m["tg_tps"] > 0 and m["threads"] == 1
    assert 0 < q8["kld_mean"] < q4["kld_mean"]
    for q in (q8, q4):  # llama-perplexity's paired ΔPPL is the difference of its two PPLs
        assert q["delta_ppl"] == pytest.approx(q["ppl"] - f16["ppl"], abs=2e-6 * f16["ppl"])
        assert 0 < q["delta_ppl_ci"] < q["ppl_ci"]  # pairing narrows it
    assert q8["top1_agreement"] > q4["top1_agreement"]
    assert f16["bpw"] > q8["bpw"] > q4["bpw"]
    assert png_size(plot) == PLOT_SIZE_PX


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_f16_perplexity_equals_a_by_hand_run(
    eval_run: tuple[dict[str, object], Path], tiny_quants: dict[str, Path], corpus_path: Path
) -> None:
    from ggufkit.llamacpp.build import find_tool
    from ggufkit.llamacpp.runner import run_tool

    args = [find_tool("llama-perplexity"), "-m", tiny_quants["f16"], "-f", corpus_path]
    args += ["-c", str(CTX), "--chunks", str(CHUNKS)]
    output = run_tool(args, what="by-hand llama-perplexity", merge_stderr=True).stdout
    final = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", output)
    assert final, output
    f16 = by_type(eval_run[0])["F16"]
    assert f16["ppl"] == float(final.group(1))
    assert f16["ppl_err"] == pytest.approx(float(final.group(2)), abs=1e-4)


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_eval_table_matches_json(
    eval_run: tuple[dict[str, object], Path], tiny_quants: dict[str, Path], corpus_path: Path
) -> None:
    args = ["eval", str(tiny_quants["q4_0"]), "--baseline", str(tiny_quants["f16"])]
    args += ["--corpus", str(corpus_path), "--ctx", str(CTX), "--chunks", str(CHUNKS)]
    result = CliRunner().invoke(cli, [*args, "--no-speed", "-t", "1"])
    assert result.exit_code == 0, result.stderr
    header = [c.strip() for c in result.stdout.splitlines()[0].strip("|").split("|")]
    assert header == ["Model", "Measure", "F16", "Q4_0"]  # the baseline comes first
    rows = table_cells(result.stdout)
    assert not any(key.startswith("ms/tok") for key in rows)
    # The same files, corpus and context give the same numbers as the --json run.
    models = by_type(eval_run[0])
    numbers_agree({"models": [models["F16"], models["Q4_0"]]}, result.stdout)


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_eval_rejects_a_corpus_too_short(tiny_quants: dict[str, Path], tmp_path: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 4)
    args = ["eval", str(tiny_quants["q4_0"]), "--corpus", str(corpus), "--ctx", "128"]
    result = CliRunner().invoke(cli, [*args, "--no-speed"])
    assert result.exit_code == 2
    assert "needs at least 256" in result.stderr and "hint: use --ctx" in result.stderr


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_bench_table_and_json(tiny_quants: dict[str, Path]) -> None:
    args = ["bench", str(tiny_quants["q4_0"]), "-p", "16", "-n", "8", "-r", "1", "-t", "1"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split("|")[1].strip() == "model"
    assert [line.split("|")[4].strip() for line in lines[2:]] == ["pp16", "tg8"]
    assert [line.split("|")[7].strip() for line in lines[2:]] == ["on", "on"]  # -fa auto, CPU
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["size_bytes"] == tiny_quants["q4_0"].stat().st_size
    assert [(t["test"], t["threads"]) for t in data["tests"]] == [("pp16", 1), ("tg8", 1)]
    off = CliRunner().invoke(cli, [*args, "--json", "--flash-attn", "off"])
    assert off.exit_code == 0, off.stderr
    assert [t["flash_attn"] for t in json.loads(off.stdout)["tests"]] == ["off", "off"]
    assert all(t["tps"] > 0 and t["ms_per_token"] == pytest.approx(1000 / t["tps"])
               for t in data["tests"])  # fmt: skip


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.slow
def test_workspace_models_and_manifest(
    tiny_quants: dict[str, Path],
    tiny_llama_gqa_dir: Path,
    corpus_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from ggufkit.workspace import init_workspace
    from ggufkit.workspace.manifest import Manifest

    init_workspace(tmp_path, str(tiny_llama_gqa_dir), name="tiny", types=["q8_0", "q4_0", "q5_0"])
    (tmp_path / "out").mkdir()
    for kind, name in (("f16", "tiny-F16"), ("q8_0", "tiny-Q8_0"), ("q4_0", "tiny-Q4_0")):
        shutil.copy(tiny_quants[kind], tmp_path / "out" / f"{name}.gguf")
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--corpus", str(corpus_path), "--ctx", str(CTX), "--chunks", str(CHUNKS)]
    result = CliRunner().invoke(cli, [*args, "--no-speed", "-t", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "not built yet, skipped: out/tiny-Q5_0.gguf" in result.stderr
    report = json.loads(result.stdout)
    assert [Path(m["path"]).name for m in report["models"]] == [
        "tiny-F16.gguf",
        "tiny-Q8_0.gguf",
        "tiny-Q4_0.gguf",
    ]
    manifest = Manifest.load(tmp_path / "out" / "manifest.json")
    for model in report["models"]:
        record = manifest.get(Path(model["path"]))
        assert record is not None
        assert record["eval"]["ppl"] == model["ppl"]
        assert record["eval"]["ctx"] == CTX and record["eval"]["baseline"] == "out/tiny-F16.gguf"
        assert ("kld_mean" in record["eval"]) == (not model["is_baseline"])
        assert "tg_tps" not in record["eval"]  # not measured: nothing recorded


def test_no_models_and_no_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["eval", "--corpus", __file__])
    assert result.exit_code == 1
    assert "no model given, and no ggufkit.toml" in result.stderr
