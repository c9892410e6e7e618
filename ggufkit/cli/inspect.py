"""`ggufkit inspect`: what is inside a GGUF file."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option
from ggufkit.core.text import printable
from ggufkit.formats.gguf_inspect import inspect_json, inspect_text
from ggufkit.formats.gguf_reader import read_gguf

# Metadata arrays longer than this are summarised (type, length, first items).
ARRAY_ITEMS = 8


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--tensors", is_flag=True, help="List every tensor: name, type, shape, bytes.")
@json_option
def command(file: Path, tensors: bool, as_json: bool) -> None:
    """Show a GGUF file's header, metadata, tensor types, bits per weight and size.

    A pre-GGUF .bin (GGML/GGMF/GGJT, bloomz.cpp) is described without converting it: format,
    version, hparams, vocabulary and tensor types.

    Long metadata arrays (the vocabulary, merges) are summarised by type, length and first items.

    \b
    Examples:
        ggufkit inspect model-Q4_0.gguf
        ggufkit inspect model-Q4_0.gguf --tensors
        ggufkit inspect model-Q4_0.gguf --json | jq .bits_per_weight
        ggufkit inspect ggml-model-q4_0.bin
    """
    from ggufkit.convert.legacy import describe_legacy, describe_legacy_text, is_legacy_file

    if is_legacy_file(file):
        legacy = describe_legacy(file)
        if as_json:
            if not tensors:
                legacy.pop("tensors")
            echo_json(legacy)
        else:
            click.echo(printable(describe_legacy_text(legacy, tensors=tensors), keep_lines=True))
        return
    from ggufkit.convert.vision import pair_of

    info = read_gguf(file, max_array_items=ARRAY_ITEMS)
    pair = pair_of(file, info.metadata)
    if as_json:
        echo_json({**inspect_json(info, tensors=tensors), "vision_pair": pair})
        return
    click.echo(inspect_text(info, tensors=tensors))
    if pair is not None:
        state = "beside it" if pair["present"] else "MISSING: not beside it"
        name = printable(Path(pair["pair"]).name)
        click.echo(
            f"vision pair:   this file is the {pair['role']}; its {pair['pair_role']}: {name} ({state})"
        )
