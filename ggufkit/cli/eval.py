"""`ggufkit eval`: perplexity, KL-divergence, size and speed of GGUF files, as the guide's table."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    chunks_option,
    corpus_option,
    count_option,
    ctx_option,
    deprecated_alias,
    device_option,
    echo_result,
    flash_attn_option,
    json_option,
    lora_option,
    parse_fraction,
    path_argument,
    path_option,
    plot_option,
    repetitions_option,
    speed_option,
    speed_size_options,
    threads_option,
)
from ggufkit.core.log import get_logger
from ggufkit.evaluate import evaluate
from ggufkit.evaluate.report import eval_table, plot_eval
from ggufkit.evaluate.sequential.intervals import DEFAULT_MIN_CHUNKS
from ggufkit.workspace.evals import record_results, resolve_models

log = get_logger("cli.eval")


@click.command("eval")
@deprecated_alias("--bench-prompt", "--prompt-tokens", "prompt_tokens", type=int)
@deprecated_alias("--bench-gen", "--gen-tokens", "gen_tokens", type=int)
@deprecated_alias("--bench-reps", "--repetitions", "repetitions", type=int)
@path_argument("models", nargs=-1)
@path_option(
    "--baseline", help="Reference for KL-divergence (default: the first F16/BF16/F32 model given)."
)
@corpus_option()
@ctx_option()
@chunks_option
@threads_option
@device_option
@speed_option
@speed_size_options
@repetitions_option
@click.option(
    "--target-error",
    callback=parse_fraction,
    metavar="E%",
    help="Stop each type once its paired 95 % intervals against the baseline are within E "
    "(ΔPPL relative to the baseline's perplexity), e.g. 1%. Default: the whole corpus.",
)
@count_option(
    "--min-chunks",
    default=DEFAULT_MIN_CHUNKS,
    minimum=2,
    help="With --target-error: chunks scored before stopping is considered.",
)
@count_option("--seed", default=0, minimum=0, help="With --target-error: seed of the chunk order.")
@plot_option("Also write a PNG: perplexity and KL-divergence against file size.")
@flash_attn_option
@lora_option
@json_option
def command(
    models: tuple[Path, ...],
    baseline: Path | None,
    corpus: Path | None,
    ctx: int | None,
    chunks: int | None,
    threads: int | None,
    speed: bool,
    prompt_tokens: int,
    gen_tokens: int,
    repetitions: int,
    target_error: float | None,
    min_chunks: int,
    seed: int,
    plot: Path | None,
    lora: Path | None,
    as_json: bool,
) -> None:
    """Fill the quantization guide's table: perplexity, KL-divergence vs F16, size, bits per
    weight and ms/token for each model.

    In a workspace (ggufkit.toml), MODELS default to its converted and quantized files, and the
    results are recorded in its manifest.

    \b
    Examples:
        ggufkit eval model-f16.gguf model-Q4_0.gguf model-Q8_0.gguf
        ggufkit eval model-Q4_0.gguf --baseline model-f16.gguf --corpus wiki.test.raw --chunks 20
        ggufkit eval model-*.gguf --json > eval.json --plot eval.png
        ggufkit eval model-f16.gguf model-Q*.gguf --target-error 1%   # stop early, 95 % intervals
        ggufkit eval                      # in a workspace: all of its GGUF files
        ggufkit eval base-F16.gguf base-Q4_0.gguf --lora my-lora-F16.gguf   # adapter applied
    """
    paths, workspace = resolve_models(models)
    report = evaluate(
        paths,
        baseline=baseline,
        corpus=corpus,
        ctx=ctx,
        chunks=chunks,
        threads=threads,
        speed=speed,
        n_prompt=prompt_tokens,
        n_gen=gen_tokens,
        repetitions=repetitions,
        target_error=target_error,
        min_chunks=min_chunks,
        seed=seed,
        lora=lora,
    )
    # the files' own results only: with an adapter applied they describe another model
    if workspace is not None and lora is None and record_results(report, workspace):
        log.info("results recorded in %s", workspace.manifest_path)
    if plot is not None:
        plot_eval(report, plot)
        log.info("plot written to %s", plot)
    echo_result(report, as_json, eval_table)
