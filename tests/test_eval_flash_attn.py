"""One attention kernel for every measurement: flash attention changes the numbers, so eval's
two paths (llama-perplexity, the in-process scorer of --target-error) must use the same setting.

The embedded tiny models do not show the difference; a random LLaMA with large weights and
128-wide heads does (flash attention accumulates in f16 where the plain path uses f32). The
first test proves that on this model llama-perplexity itself moves far beyond the tolerance
with -fa on vs off; the second that the scorer equals llama-perplexity with either setting.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from random_gguf import write_random_gguf

from ggufkit.cli import cli
from ggufkit.evaluate.sequential.chunkcache import ChunkCache
from ggufkit.llamacpp.attention import use_flash_attn

CTX = 256
CHUNKS = 8
# docs/eval-intervals.md: the scorer's pooled PPL equals llama-perplexity's to this (relative)
TOLERANCE = 2e-4
# The model: large weights (activations of tens) and head_dim 128.
MODEL = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 2, "kv_heads": 2}
SCALE = 1.0
EVAL_ARGS = ["eval", "--ctx", str(CTX), "--chunks", str(CHUNKS), "--no-speed", "--json"]

pytestmark = [pytest.mark.needs_llamacpp, pytest.mark.slow]


@pytest.fixture(scope="module")
def fa_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ggufkit.quantize import quantize

    out = tmp_path_factory.mktemp("fa-model")
    f16 = write_random_gguf(out / "fa-f16.gguf", **MODEL, vocab=512, scale=SCALE)
    q8 = quantize(f16, ["q8_0"], outdir=out)[0].output
    return {"f16": f16, "q8_0": q8}


def upstream(models: dict[str, Path], work: Path, setting: str) -> tuple[float, float]:
    """llama-perplexity's PPL of the f16 model and PPL(Q) of q8_0 against it."""
    from ggufkit.evaluate import kl_divergence, perplexity
    from ggufkit.evaluate.pipeline import default_corpus

    base_file = work / f"base-{setting}.kld"
    with use_flash_attn(setting):  # type: ignore[arg-type]
        base = perplexity(
            models["f16"], default_corpus(), ctx=CTX, chunks=CHUNKS, save_base=base_file
        )
        kld = kl_divergence(models["q8_0"], base_file, ctx=CTX)
    return base.ppl, kld.ppl


def in_process(models: dict[str, Path], work: Path, setting: str) -> tuple[float, float]:
    """The --target-error scorer's pooled values on the same chunks (every chunk scored)."""
    from ggufkit.evaluate.pipeline import default_corpus
    from ggufkit.evaluate.sequential import run_sequential

    with use_flash_attn(setting):  # type: ignore[arg-type]
        run = run_sequential(
            models["f16"],
            [models["q8_0"]],
            default_corpus(),
            ctx=CTX,
            target=1e-12,
            max_chunks=CHUNKS,
            cache=ChunkCache(work / f"cache-{setting}"),
        )
    rows = run.runs[models["q8_0"]]
    assert len(rows.rows) == CHUNKS
    return math.exp(rows.column("base_nll").mean()), math.exp(rows.column("nll").mean())


@pytest.fixture(scope="module")
def measured(fa_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("fa-runs")
    return {
        (side, setting): run(fa_models, work, setting)
        for side, run in (("upstream", upstream), ("scorer", in_process))
        for setting in ("on", "off")
    }


def relative(a: float, b: float) -> float:
    return abs(a / b - 1)


def test_flash_attention_moves_llama_perplexity_on_this_model(measured: dict) -> None:
    """Without this, the next test could not tell the two kernels apart."""
    on, off = measured["upstream", "on"], measured["upstream", "off"]
    print(f"llama-perplexity f16 PPL -fa on {on[0]:.6f}, off {off[0]:.6f}; "
          f"q8_0 {on[1]:.6f} / {off[1]:.6f}")  # fmt: skip
    assert relative(on[0], off[0]) > 10 * TOLERANCE
    assert relative(on[1], off[1]) > 10 * TOLERANCE


@pytest.mark.parametrize("setting", ["on", "off"])
def test_scorer_equals_llama_perplexity_with_the_same_setting(measured: dict, setting: str) -> None:
    ours, theirs = measured["scorer", setting], measured["upstream", setting]
    print(f"-fa {setting}: scorer {ours}, llama-perplexity {theirs}")
    assert relative(ours[0], theirs[0]) < TOLERANCE
    assert relative(ours[1], theirs[1]) < TOLERANCE


def _eval_json(model: Path, *extra: str) -> dict:
    """``ggufkit eval --json`` of one model on the test's chunks, without llama-bench."""
    import json

    args = ["eval", str(model), "--ctx", str(CTX), "--chunks", str(CHUNKS), "--no-speed"]
    result = CliRunner().invoke(cli, [*args, "--json", *extra])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_auto_is_on_for_the_cpu(measured: dict, fa_models: dict[str, Path]) -> None:
    """llama.cpp's default (auto) resolves to flash attention on for the CPU backend: the
    default eval's JSON says so and its numbers are the -fa on numbers."""
    report = _eval_json(fa_models["f16"])
    assert (report["flash_attn"], report["flash_attn_resolved"]) == ("auto", "on")
    ppl = report["models"][0]["ppl"]
    assert ppl == pytest.approx(measured["upstream", "on"][0], rel=1e-6)
    assert relative(ppl, measured["upstream", "off"][0]) > 10 * TOLERANCE


def test_flash_attn_option_reaches_llama_perplexity(
    measured: dict, fa_models: dict[str, Path]
) -> None:
    report = _eval_json(fa_models["f16"], "--flash-attn", "off")
    assert (report["flash_attn"], report["flash_attn_resolved"]) == ("off", "off")
    assert report["models"][0]["ppl"] == pytest.approx(measured["upstream", "off"][0], rel=1e-6)


def test_imatrix_runs_with_the_setting(fa_models: dict[str, Path], tmp_path: Path) -> None:
    """llama-imatrix gets -fa too: its perplexity moves with the setting as llama-perplexity's."""
    import json

    from ggufkit.evaluate.pipeline import default_corpus

    found = {}
    for setting in ("on", "off"):
        result = CliRunner().invoke(
            cli,
            [
                "imatrix",
                str(fa_models["f16"]),
                "--corpus",
                str(default_corpus()),
                "-o",
                str(tmp_path / f"imatrix-{setting}.gguf"),
                "-c",
                str(CTX),
                "--chunks",
                "2",
                "--flash-attn",
                setting,
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert (report["flash_attn"], report["flash_attn_resolved"]) == (setting, setting)
        found[setting] = report["perplexity"]
    assert relative(found["on"], found["off"]) > 10 * TOLERANCE
