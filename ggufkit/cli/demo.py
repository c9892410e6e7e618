"""`ggufkit demo`: the whole pipeline on the embedded tiny models, offline."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    deprecated_alias,
    echo_json,
    force_option,
    json_option,
    path_option,
    speed_option,
    threads_option,
)
from ggufkit.demo import DEFAULT_OUTDIR


@click.command("demo")
@deprecated_alias("-o", "--outdir", "outdir", type=click.Path(path_type=Path, file_okay=False))
@path_option(
    "--outdir",
    kind="dir",
    default=None,
    help=f"Where the GGUF files, the manifest, the tables and the plots go "
    f"(default: {DEFAULT_OUTDIR}).",
)
@click.option(
    "--bnb/--no-bnb",
    default=True,
    help="Measure bitsandbytes on tiny-llama beside the GGUF files, and ask the tiny vision "
    "model about a picture through both paths (default: on).",
)
@speed_option
@force_option("Redo every step, even those that are up to date.")
@threads_option
@json_option
def command(
    outdir: Path | None, bnb: bool, speed: bool, force: bool, threads: int | None, as_json: bool
) -> None:
    """Show the whole pipeline on the tiny models shipped with ggufkit, without a download.

    The models were trained on Shakespeare (tiny-llama, tiny-bloom) and, as a delta against
    tiny-llama, on Milton (tiny-llama-milton), so their outputs mean something. The demo merges the
    Milton delta while converting, converts the three models to f16, quantizes each to q8_0, q4_0
    and q4_k_m, measures perplexity, KL-divergence, size and speed on held-out text (Macbeth),
    puts bitsandbytes (nf4, fp4, int8, ...) beside the GGUF files on tiny-llama, and generates a
    few lines from each q4_0 file. The embedded LoRA adapter (tiny-llama-milton-lora) runs three
    ways: its adapter GGUF applied to tiny-llama's f16 (--lora), merged while converting, and PEFT
    in transformers; their greedy answers, verify against PEFT and held-out perplexity are shown.
    The embedded tiny-minicpmv (a MiniCPM-V 4.6 with random weights: its answers are noise) is
    converted to its GGUF pair and asked about a picture through bitsandbytes (unquantized and
    nf4 with double quantization) and llama-mtmd-cli, in one table. It prints where everything is, the
    samples and the tables.

    Needs the llama.cpp build (`ggufkit build`; `make demo` does both). Steps whose inputs and
    options are unchanged are reused on the next run (`--force` redoes them); OUTDIR/manifest.json
    records how each file was made.

    \b
    Examples:
        ggufkit demo
        ggufkit demo --outdir /tmp/demo --no-bnb --no-speed
        ggufkit demo --json > demo.json
    """
    from ggufkit.demo import markdown, run_demo, where

    result = run_demo(
        outdir or Path(DEFAULT_OUTDIR), bnb=bnb, speed=speed, threads=threads, force=force
    )
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(where(result))
    click.echo()
    click.echo(markdown(result), nl=False)
