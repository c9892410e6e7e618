"""`ggufkit merge-delta`: target = base + delta, tensor by tensor (Vicuna, StableVicuna, Chimera)."""

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

STYLE_CHOICES = ("auto", "llmzoo", "fastchat")
DTYPE_CHOICES = ("f16", "bf16", "f32")


@click.command("merge-delta")
@model_ref_option("base", "Base model: directory or Hub id.")
@model_ref_option("delta", "Delta weights: directory or Hub id.")
@output_option(
    "Directory for the merged model (written under a temporary name, renamed when done).",
    required=True,
)
@choice_option(
    "--style",
    choices=STYLE_CHOICES,
    default="auto",
    help="How the delta was made (see Styles above).",
)
@choice_option(
    "--dtype",
    choices=DTYPE_CHOICES,
    help="Round both inputs to this dtype, add, and write the sum in it (default: f16).",
)
@json_option
def command(
    base: str, delta: str, output: Path, style: str, dtype: str | None, as_json: bool
) -> None:
    """Merge delta weights into their base model: TARGET = BASE + DELTA.

    One tensor at a time, so memory stays near the largest tensor, not the model. Both sides
    may be safetensors or pytorch_model*.bin (read weights-only), sharded alike or not. The
    output holds safetensors shards of at most 5 GB (with an index), the delta's config.json
    and the delta's tokenizer files, as FastChat and LLMZoo save them, and ggufkit-merge.json:
    the base and delta files it came from (sha256), which `ggufkit convert` records as the GGUF's
    source, so merging then converting gives the same file as `convert --delta-base`.

    \b
    Styles:
      fastchat  FastChat's apply_delta (Vicuna): both models loaded as fp16, added in fp16;
                names and shapes must match exactly.
      llmzoo    LLMZoo's apply_delta (Chimera): the same add, and rows the delta appends to
                the vocabulary (32000 -> 32001 for a <pad>) get a zero base, as LLMZoo means
                to do. Existing rows are never zeroed (LLMZoo's `x[-0:] = 0` would zero them
                all when no token was added).
      auto      llmzoo when the delta has more vocabulary rows than the base, else fastchat;
                the choice is logged.
    The default dtype is f16, the one both tools add in; --dtype f32 adds exactly and writes
    float32, --dtype bf16 rounds to bfloat16 instead.

    \b
    Examples:
        ggufkit merge-delta --base ./llama-7b --delta lmsys/vicuna-7b-delta-v0 -o vicuna-7b
        ggufkit merge-delta --base ./llama-7b --delta ./chimera-7b-delta -o chimera-7b --dtype f32
        ggufkit convert ./vicuna-7b-delta --delta-base ./llama-7b -o vicuna-7b-f16.gguf
    """
    from ggufkit.delta import merge_delta

    result = merge_delta(base, delta, output, style=style, dtype=dtype)
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(
        f"merged {result.tensors} tensors ({result.style} style, {result.dtype}) "
        f"in {result.seconds:.1f} s"
    )
    click.echo(str(result.output))
