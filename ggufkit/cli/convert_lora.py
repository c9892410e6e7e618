"""`ggufkit convert-lora`: a PEFT LoRA adapter to llama.cpp's LoRA GGUF (applied with --lora)."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    choice_option,
    echo_json,
    force_option,
    json_option,
    model_ref_option,
    output_option,
    path_argument,
)


@click.command("convert-lora")
@path_argument("adapter", kind="dir")
@model_ref_option("base", "Base model the adapter was trained on: directory or Hub id.")
@output_option("Output file (default: ./<adapter>-<OUTTYPE>-LoRA.gguf).")
@choice_option(
    "--outtype",
    choices=["f16", "bf16", "f32", "q8_0"],
    default="f16",
    case_sensitive=False,
    help="Type of the lora_a/lora_b tensors.",
)
@force_option("Overwrite an existing output file.")
@json_option
def command(
    adapter: Path, base: str, output: Path | None, outtype: str, force: bool, as_json: bool
) -> None:
    """Convert a LoRA adapter (PEFT's adapter_config.json + adapter_model.safetensors) to GGUF.

    Through the pinned upstream convert_lora_to_gguf.py, after ggufkit's checks against the base
    (names, shapes, architecture: an adapter for another base fails before anything is written)
    and with ggufkit's answers where upstream is silently wrong: rsLoRA's scale (alpha * sqrt(r)
    written), alpha_pattern and rank patterns (the ratio folded into lora_B). What a llama.cpp
    adapter cannot carry is refused with a hint to merge instead: modules_to_save, resized
    embeddings, a LoRA on an lm_head tied to the embeddings. The file records the base's and
    the adapter's sha256s. Apply it with `ggufkit run/eval/verify --lora FILE`.

    \b
    Examples:
        ggufkit convert-lora ./my-lora --base ./llama-7b -o my-lora-f16.gguf
        ggufkit run llama-7b-f16.gguf --lora my-lora-f16.gguf -p "Once upon a time"
        ggufkit merge-lora --base ./llama-7b --adapter ./my-lora -o my-model   # merged instead
    """
    from ggufkit.convert.lora_adapter import convert_lora_adapter

    result = convert_lora_adapter(adapter, base, output, outtype=outtype, force=force)
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(str(result.output))
    click.echo(
        f"  LoRA adapter for {result.gguf_arch}, {result.outtype}, {result.n_tensors} tensors, "
        f"alpha {result.alpha:g}, in {result.seconds:.1f} s"
    )
    for note in result.notes:
        click.echo(f"  {note}")
