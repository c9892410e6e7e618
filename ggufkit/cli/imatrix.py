"""`ggufkit imatrix`: an importance matrix for `ggufkit quantize --imatrix`."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option, threads_option
from ggufkit.quantize.imatrix import DEFAULT_CTX, compute_imatrix


@click.command("imatrix")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--corpus",
    "-f",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Calibration text (plain text, like what the model will see).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output file (default: <stem>-imatrix.gguf beside MODEL).",
)
@click.option(
    "--ctx-size",
    "-c",
    type=click.IntRange(min=8),
    default=DEFAULT_CTX,
    show_default=True,
    help="Tokens per chunk; the text must hold at least two chunks.",
)
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many chunks (default: all).",
)
@threads_option
@json_option
def command(
    model: Path,
    corpus: Path,
    output: Path | None,
    ctx_size: int,
    chunks: int | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Compute an importance matrix for MODEL (a GGUF, best the f16 one) on a calibration text.

    Runs the built llama-imatrix. The matrix lets the low-bit types (IQ1/IQ2, IQ3_XXS, Q2_K_S)
    work at all and improves the others; pass it to `ggufkit quantize --imatrix`.

    \b
    Examples:
        ggufkit imatrix my-model-f16.gguf --corpus calibration.txt
        ggufkit quantize my-model-f16.gguf iq2_xxs q4_k_m --imatrix my-model-imatrix.gguf
    """
    result = compute_imatrix(
        model, corpus, output=output, ctx_size=ctx_size, chunks=chunks, threads=threads
    )
    if as_json:
        echo_json(result.to_json())
        return
    ppl = f", perplexity {result.perplexity:.2f}" if result.perplexity is not None else ""
    click.echo(
        f"{result.output}: {result.entries} tensors over {result.chunks} chunks{ppl} "
        f"({result.seconds:.1f} s)"
    )
