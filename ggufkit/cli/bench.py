"""`ggufkit bench`: prompt and generation speed of a GGUF file (llama-bench)."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    count_option,
    device_option,
    echo_json,
    flash_attn_option,
    json_option,
    path_argument,
)
from ggufkit.evaluate.report import bench_table
from ggufkit.evaluate.speed import DEFAULT_GEN, DEFAULT_PROMPT, DEFAULT_REPETITIONS, benchmark


@click.command("bench")
@path_argument("model")
@count_option(
    "-p",
    "--prompt-tokens",
    default=DEFAULT_PROMPT,
    minimum=0,
    help="Prompt length to process (0: skip).",
)
@count_option(
    "-n", "--gen-tokens", default=DEFAULT_GEN, minimum=0, help="Tokens to generate (0: skip)."
)
@count_option(
    "-r",
    "--repetitions",
    default=DEFAULT_REPETITIONS,
    help="Runs per test (mean ± standard deviation).",
)
@count_option(
    "-t",
    "--threads",
    multiple=True,
    show_default=False,
    help="CPU threads; repeat to compare (-t 4 -t 8). Default: llama-bench's choice.",
)
@device_option
@flash_attn_option
@json_option
def command(
    model: Path,
    prompt_tokens: int,
    gen_tokens: int,
    repetitions: int,
    threads: tuple[int, ...],
    as_json: bool,
) -> None:
    """Measure prompt processing (pp) and generation (tg) speed in tokens per second.

    \b
    Examples:
        ggufkit bench model-Q4_0.gguf
        ggufkit bench model-Q4_0.gguf -t 4 -t 8 -r 3
        ggufkit bench model-Q4_0.gguf -p 0 -n 64 --json
        ggufkit bench big-Q4_0-00001-of-00003.gguf     # a split set, from its first file
    """
    from ggufkit.formats.gguf_split import set_size

    results = benchmark(
        model, n_prompt=prompt_tokens, n_gen=gen_tokens, repetitions=repetitions, threads=threads
    )
    if as_json:
        echo_json(
            {
                "model": str(model),
                "size_bytes": set_size(model),
                "tests": [r.to_json() for r in results],
            }
        )
        return
    click.echo(bench_table(results, {str(model): set_size(model)}))
