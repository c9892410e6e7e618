"""`eval --target-error` on real models: per-chunk values against llama-perplexity's final
numbers, the coverage proof of the intervals, and the command's table and cache reuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.evaluate.sequential import SequentialRun, run_sequential
from ggufkit.evaluate.sequential.chunkcache import ChunkCache
from ggufkit.evaluate.sequential.intervals import coverage

CTX = 128
RUNS = 400  # chunk orders per model and type in the coverage proof
TARGET = 0.01

pytestmark = [pytest.mark.needs_llamacpp, pytest.mark.slow]


@pytest.fixture(scope="module")
def embedded_quants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The embedded tiny-llama (3.4M parameters) as f16, q8_0 and q4_0."""
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model
    from ggufkit.quantize import quantize

    out = tmp_path_factory.mktemp("embedded")
    f16 = out / "tiny-llama-f16.gguf"
    convert(embedded_model("tiny-llama"), f16, outtype="f16")
    results = quantize(f16, ["q8_0", "q4_0"], outdir=out)
    return {"f16": f16, **{r.type.lower(): r.output for r in results}}


def score_everything(
    base: Path, types: list[Path], cache: Path, max_chunks: int | None = None
) -> SequentialRun:
    """Every chunk of the embedded corpus for every type (a target no run can meet)."""
    from ggufkit.evaluate.pipeline import default_corpus

    return run_sequential(
        base,
        types,
        default_corpus(),
        ctx=CTX,
        target=1e-12,
        max_chunks=max_chunks,
        cache=ChunkCache(cache),
    )


@pytest.fixture(scope="module")
def embedded_full(
    embedded_quants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> SequentialRun:
    types = [embedded_quants["q8_0"], embedded_quants["q4_0"]]
    return score_everything(embedded_quants["f16"], types, tmp_path_factory.mktemp("cache"))


def test_per_chunk_values_agree_with_llama_perplexity_on_the_full_corpus(
    embedded_quants: dict[str, Path], embedded_full: SequentialRun, tmp_path: Path
) -> None:
    """Pooled over the whole embedded corpus, the chunks scored in-process give llama-perplexity's
    final PPL, PPL(Q), mean KLD and same-top-token numbers."""
    from ggufkit.evaluate import kl_divergence, perplexity
    from ggufkit.evaluate.pipeline import default_corpus

    base_file = tmp_path / "base.kld"
    upstream = perplexity(embedded_quants["f16"], default_corpus(), ctx=CTX, save_base=base_file)
    assert upstream.chunks == embedded_full.corpus_chunks == embedded_full.base_chunks
    for name in ("q8_0", "q4_0"):
        rows = embedded_full.runs[embedded_quants[name]]
        assert len(rows.rows) == embedded_full.corpus_chunks
        assert math.exp(rows.column("base_nll").mean()) == pytest.approx(upstream.ppl, rel=5e-5)
        kld = kl_divergence(embedded_quants[name], base_file, ctx=CTX)
        # The tolerances date from a scorer that ran one chunk per batch where llama-perplexity
        # runs 16: that alone moved Q4_0's PPL(Q) by 1e-4 and same top by 0.2 points. The
        # batched scorer (the same layout) is well inside them.
        assert math.exp(rows.column("nll").mean()) == pytest.approx(kld.ppl, rel=2e-4)
        assert rows.column("kld").mean() == pytest.approx(kld.kld_mean, rel=3e-2, abs=2e-6)
        assert rows.column("top1").mean() == pytest.approx(kld.top1_agreement, abs=5e-3)


def check_coverage(run: SequentialRun, model: Path, label: str, target: float = TARGET) -> None:
    got = coverage(run.runs[model].values(), target=target, runs=RUNS, seed=1000)
    summary = ", ".join(f"{n} {100 * got.rate(n):.1f}%" for n in got.covered)
    print(
        f"{label}: {got.runs} runs, {got.mean_chunks:.1f} of {got.total_chunks} chunks on "
        f"average; coverage {summary}"
    )
    for name in ("delta_ppl", "kld", "top1"):
        # one-sided exact binomial test of H0 "coverage >= 95 %" at the 5 % level
        assert got.p_value(name) >= 0.05, (label, name, got.covered[name], got.runs)
    assert got.mean_chunks < got.total_chunks  # the runs did stop early


def test_intervals_cover_the_full_corpus_value_embedded(
    embedded_quants: dict[str, Path], embedded_full: SequentialRun
) -> None:
    for name in ("q8_0", "q4_0"):
        check_coverage(embedded_full, embedded_quants[name], f"tiny-llama {name}")


@pytest.mark.needs_torch
def test_intervals_cover_the_full_corpus_value_larger_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A random-weight LLaMA of about 20M parameters made here, f16 against q4_0, on the first
    96 chunks of the corpus (the "full corpus" of this test), at a 3 % target: random weights
    make q4_0 far from f16 (KLD ~0.29, same top token ~21 %, PPL ~1580), and its ΔPPL interval
    is still ±2 % of PPL after all 96 chunks, so at 1 % no run would stop early."""
    from tiny import make_llama

    from ggufkit.convert import convert
    from ggufkit.quantize import quantize

    out = tmp_path_factory.mktemp("larger")
    checkpoint = make_llama(
        out / "hf", hidden=512, layers=6, heads=8, intermediate=1376, vocab_size=800, seed=5
    )
    f16 = out / "larger-f16.gguf"
    convert(checkpoint, f16, outtype="f16")
    (q4,) = quantize(f16, ["q4_0"], outdir=out)
    run = score_everything(f16, [q4.output], out / "cache", max_chunks=96)
    check_coverage(run, q4.output, "random LLaMA 20M q4_0", target=0.03)


def test_eval_target_error_table_and_cache_reuse(
    embedded_quants: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.evaluate.pipeline import default_corpus

    monkeypatch.setenv("GGUFKIT_EVAL_CACHE_DIR", str(tmp_path / "cache"))  # a cache of its own
    args = ["eval", *(str(embedded_quants[t]) for t in ("f16", "q8_0", "q4_0"))]
    args += ["--target-error", "2%", "--ctx", str(CTX), "--no-speed", "--min-chunks", "8"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    seq = report["sequential"]
    assert seq["target"] == 0.02 and seq["cache_hits"] == 0
    assert Path(report["corpus"]) == default_corpus()
    models = {m["type"]: m for m in report["models"]}
    for name in ("Q8_0", "Q4_0"):
        m = models[name]
        assert 8 <= m["chunks"] < seq["corpus_chunks"]  # 2 % is reached well before the end
        assert m["delta_ppl_ci"] <= 0.02 * models["F16"]["ppl"]
        assert m["kld_ci"] <= 0.02 and m["top1_ci"] <= 0.02
        assert m["eval_seconds"] > 0 and m["eval_seconds_saved"] > 0
        assert m["ppl_err"] is None  # only 95 % half-widths in this mode, never mixed
    assert models["F16"]["chunks"] == max(models[t]["chunks"] for t in ("Q8_0", "Q4_0"))
    assert models["F16"]["ppl_ci"] > 0
    assert models["Q4_0"]["kld_mean"] > models["Q8_0"]["kld_mean"]
    assert seq["tokens_scored"] == CTX * sum(m["chunks"] for m in models.values())
    assert seq["tokens_scored"] < seq["tokens_full"]

    again = CliRunner().invoke(cli, args)  # the same chunks again: all from the cache
    assert again.exit_code == 0, again.stderr
    assert "± " in again.stdout and "chunks scored" in again.stdout
    hits = int(again.stdout.split(" chunk results from the cache")[0].rsplit(" ", 1)[-1])
    assert hits == models["Q8_0"]["chunks"] + models["Q4_0"]["chunks"]
    table = {line.split("|")[2].strip(): line for line in again.stdout.splitlines()[2:9]}
    assert (
        f"{models['Q4_0']['kld_mean']:.6f} ± {models['Q4_0']['kld_ci']:.6f}"
        in (table["KL-divergence"])
    )
    assert np.isfinite(models["Q4_0"]["delta_ppl"])
