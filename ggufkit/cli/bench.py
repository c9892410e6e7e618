"""`ggufkit bench`: prompt and generation speed of a GGUF file (llama-bench)."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    count_option,
    deprecated_alias,
    device_option,
    echo_json,
    flash_attn_option,
    json_option,
    path_argument,
    repetitions_option,
    speed_size_options,
)
from ggufkit.evaluate.report import bench_table
from ggufkit.evaluate.speed import benchmark


@click.command("bench")
@deprecated_alias("-p", "--prompt-tokens", "prompt_tokens", type=int)
@deprecated_alias("-n", "--gen-tokens", "gen_tokens", type=int)
@deprecated_alias("-r", "--repetitions", "repetitions", type=int)
@path_argument("model")
@speed_size_options
@repetitions_option
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
        ggufkit bench model-Q4_0.gguf -t 4 -t 8 --repetitions 5
        ggufkit bench model-Q4_0.gguf --prompt-tokens 0 --gen-tokens 64 --json
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
