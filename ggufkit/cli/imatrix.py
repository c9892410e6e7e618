"""`ggufkit imatrix`: an importance matrix for `ggufkit quantize --imatrix`."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    chunks_option,
    corpus_option,
    ctx_option,
    echo_json,
    flash_attn_option,
    json_option,
    output_option,
    path_argument,
    threads_option,
)
from ggufkit.quantize.imatrix import DEFAULT_CTX, compute_imatrix


@click.command("imatrix")
@path_argument("model", kind="file")
@corpus_option("Calibration text (plain text, like what the model will see).", required=True)
@output_option("Output file (default: <stem>-imatrix.gguf beside MODEL).", kind="file")
@ctx_option(f"Tokens per chunk (default {DEFAULT_CTX}); the text must hold at least two chunks.")
@chunks_option
@threads_option
@flash_attn_option
@json_option
def command(
    model: Path,
    corpus: Path,
    output: Path | None,
    ctx: int | None,
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
        model, corpus, output=output, ctx_size=ctx or DEFAULT_CTX, chunks=chunks, threads=threads
    )
    if as_json:
        echo_json(result.to_json())
        return
    ppl = f", perplexity {result.perplexity:.2f}" if result.perplexity is not None else ""
    click.echo(
        f"{result.output}: {result.entries} tensors over {result.chunks} chunks{ppl} "
        f"({result.seconds:.1f} s, flash attention {result.flash_attn_resolved})"
    )
