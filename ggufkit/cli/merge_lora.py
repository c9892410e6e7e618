"""`ggufkit merge-lora`: a PEFT LoRA adapter merged into its base, tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    choice_option,
    echo_json,
    json_option,
    model_ref_option,
    output_option,
    path_option,
)

DTYPE_CHOICES = ("f16", "bf16", "f32")


@click.command("merge-lora")
@model_ref_option("base", "Base model the adapter was trained on: directory or Hub id.")
@path_option(
    "--adapter",
    kind="dir",
    required=True,
    help="PEFT adapter directory (adapter_config.json, adapter_model.safetensors).",
)
@output_option(
    "Directory for the merged model (written under a temporary name, renamed when done).",
    required=True,
)
@choice_option(
    "--dtype",
    choices=DTYPE_CHOICES,
    help="Write the merged weights in this dtype (default: the base's own dtype).",
)
@json_option
def command(base: str, adapter: Path, output: Path, dtype: str | None, as_json: bool) -> None:
    """Merge a LoRA adapter into its base model: W + scale * B @ A for every targeted weight.

    One row block at a time, so memory stays near a few blocks, not the model. scale is
    lora_alpha / r (lora_alpha / sqrt(r) with use_rslora; rank_pattern and alpha_pattern per
    module), as PEFT's merge_and_unload() computes it: base + update in float32, rounded once
    to the model's dtype (--dtype f32 keeps the float32 sum). Whole modules the adapter saves
    (modules_to_save, resized embeddings) replace the base's; a LoRA on an lm_head the base ties
    to its embeddings is merged into the shared matrix, as PEFT does (a warning says so). DoRA and
    other PEFT types are refused. The output is a Hugging Face directory with the base's config
    and tokenizer (the adapter's tokenizer when it saved one) and ggufkit-merge.json, which
    `ggufkit convert` records as the GGUF's source (base and adapter sha256s).

    \b
    Examples:
        ggufkit merge-lora --base ./llama-7b --adapter ./my-lora -o my-model
        ggufkit convert ./llama-7b --lora ./my-lora -o my-model-f16.gguf   # fused, same weights
        ggufkit convert-lora ./my-lora --base ./llama-7b                   # a llama.cpp adapter
    """
    from ggufkit.delta import merge_lora

    result = merge_lora(base, adapter, output, dtype=dtype)
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(
        f"merged the adapter into {result.tensors} tensors ({result.dtype}) in {result.seconds:.1f} s"
    )
    click.echo(str(result.output))
