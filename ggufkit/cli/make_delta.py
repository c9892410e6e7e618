"""`ggufkit make-delta`: delta = target - base, the inverse of merge-delta."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    choice_option,
    echo_json,
    json_option,
    model_ref_option,
    output_option,
)

DTYPE_CHOICES = ("f16", "bf16", "f32")


@click.command("make-delta")
@model_ref_option("base", "Base model: directory or Hub id.")
@model_ref_option("target", "Fine-tuned model: directory or Hub id.")
@output_option(
    "Directory for the delta (written under a temporary name, renamed when done).", required=True
)
@choice_option(
    "--dtype",
    choices=DTYPE_CHOICES,
    help="Round both inputs to this dtype, subtract, and write the delta in it (default: f16).",
)
@json_option
def command(base: str, target: str, output: Path, dtype: str | None, as_json: bool) -> None:
    """Write the delta of TARGET against BASE: DELTA = TARGET - BASE, tensor by tensor.

    The default f16 matches FastChat's make_delta. With --dtype f32 the delta is exact
    wherever float32 holds TARGET - BASE exactly (for fp16 models, every difference below 1),
    so that `merge-delta --dtype f32` gives the target back bit for bit; a warning counts the
    values where it cannot. Rows the target appends to the vocabulary are stored as they are,
    which `merge-delta --style llmzoo` (or auto) undoes. The delta gets the target's config and
    tokenizer files.

    \b
    Examples:
        ggufkit make-delta --base ./llama-7b --target ./my-finetune -o my-finetune-delta
        ggufkit make-delta --base ./llama-7b --target ./my-finetune -o delta-f32 --dtype f32
    """
    from ggufkit.delta import make_delta

    path = make_delta(base, target, output, dtype=dtype)
    if as_json:
        echo_json({"output": str(path), "dtype": dtype or "f16"})
        return
    click.echo(str(path))
