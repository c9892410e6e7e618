"""`ggufkit quantize`: a GGUF to one or more llama.cpp quantization types."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option, split_options, threads_option
from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import human_bytes
from ggufkit.quantize import QuantizeOptions, list_types, parse_kv_override
from ggufkit.quantize.engines import parse_prune_layers, parse_tensor_type
from ggufkit.quantize.types import format_table


def split_input(args: tuple[str, ...]) -> tuple[Path, list[str]]:
    """INPUT is the first argument when it names a file or checkpoint directory (or ends in
    .gguf); the rest are types."""
    if not args:
        raise UsageError(
            "give the GGUF to quantize and at least one type",
            hint="e.g. `ggufkit quantize my-model-f16.gguf q4_0` (`--list` shows the types)",
        )
    first = args[0]
    if first.lower().endswith(".gguf") or Path(first).exists():
        if len(args) == 1:
            raise UsageError(
                f"no quantization type given for {first}",
                hint=f"e.g. `ggufkit quantize {first} q4_0` (`--list` shows the types)",
            )
        return Path(first), list(args[1:])
    raise UsageError(
        f"no INPUT.gguf given (only {' '.join(args)})",
        hint="pass the GGUF first: `ggufkit quantize my-model-f16.gguf "
        f"{' '.join(args)}`, or run `ggufkit init` to set up a workspace",
    )


@click.command("quantize")
@click.argument("args", nargs=-1, metavar="[INPUT.gguf] TYPE [TYPE ...]")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output file (one TYPE).",
)
@click.option(
    "--outdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the outputs (default: beside INPUT).",
)
@click.option(
    "--imatrix",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Importance matrix from `ggufkit imatrix` (required by IQ1/IQ2 types, Q2_K_S ...).",
)
@threads_option
@click.option("--allow-requantize", is_flag=True, help="Allow an already quantized INPUT.")
@click.option("--leave-output-tensor", is_flag=True, help="Leave output.weight unquantized.")
@click.option("--pure", is_flag=True, help="No k-quant mixtures: every tensor in TYPE.")
@click.option("--output-tensor-type", metavar="T", help="ggml type for output.weight, e.g. q8_0.")
@click.option("--token-embedding-type", metavar="T", help="ggml type for token embeddings.")
@click.option(
    "--override-kv",
    "override_kv",
    multiple=True,
    metavar="KEY=TYPE:VALUE",
    help="Set a metadata key (TYPE int|float|bool|str). Repeatable.",
)
@click.option(
    "--tensor-type",
    "tensor_types",
    multiple=True,
    metavar="NAME=TYPE",
    help="Store the tensors matching NAME in ggml TYPE, e.g. attn_v=q8_0. Repeatable.",
)
@click.option("--prune-layers", metavar="L0,L1,...", help="Drop these layers (advanced).")
@click.option("--keep-split", is_flag=True, help="A split INPUT: one output shard per shard.")
@click.option("--dry-run", is_flag=True, help="Show each output's size; write nothing.")
@click.option("--list", "list_only", is_flag=True, help="List the types with bits per weight.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace existing outputs (without it they are refused); in a workspace: redo steps "
    "even when up to date.",
)
@split_options
@json_option
def command(
    args: tuple[str, ...],
    output: Path | None,
    outdir: Path | None,
    imatrix: Path | None,
    threads: int | None,
    allow_requantize: bool,
    leave_output_tensor: bool,
    pure: bool,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    override_kv: tuple[str, ...],
    tensor_types: tuple[str, ...],
    prune_layers: str | None,
    keep_split: bool,
    dry_run: bool,
    list_only: bool,
    force: bool,
    split_max_size: str | None,
    split_max_tensors: int | None,
    as_json: bool,
) -> None:
    """Quantize a GGUF with the pinned llama.cpp to each TYPE (any case).

    TYPE is any type the built llama-quantize accepts: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k ...
    q6_k, q4_k_m, iq*, tq*, mxfp4_moe, f16, bf16, copy (`--list` shows them all). Outputs are
    named <stem>-<TYPE>.gguf beside INPUT (or in --outdir), where <stem> is INPUT's name less a
    trailing precision such as -f16 (see the first example). Each is written under a temporary
    name and renamed when complete; an existing output is refused without --force.
    IQ1/IQ2/IQ3_XXS and Q2_K_S need --imatrix. INPUT may be a Hugging Face checkpoint
    directory: it is converted to F16 in a temporary file first, and the outputs are named
    <checkpoint>-<TYPE>.gguf in the current folder (or --outdir).

    \b
    Examples:
        ggufkit quantize my-model-f16.gguf q4_0          # -> my-model-Q4_0.gguf
        ggufkit quantize my-model-f16.gguf q4_0 q8_0 q4_k_m --outdir quants/
        ggufkit quantize ./my-model q4_k_m               # a checkpoint -> my-model-Q4_K_M.gguf
        ggufkit imatrix my-model-f16.gguf --corpus calibration.txt
        ggufkit quantize my-model-f16.gguf iq2_xxs --imatrix my-model-imatrix.gguf
        ggufkit quantize --list
        ggufkit init ./tiny-llama && ggufkit convert && ggufkit quantize q4_0
        ggufkit quantize big-f16.gguf q4_k_m --split-max-size 50G   # through llama-gguf-split

    Without INPUT, in a workspace (`ggufkit init`), the converted file is brought up to date
    first, TYPEs default to ggufkit.toml's `types`, and up-to-date outputs are skipped.
    """
    from ggufkit.formats.gguf_split import split_limits

    split = split_limits(split_max_size, split_max_tensors)
    if list_only:
        table = list_types()
        if as_json:
            echo_json([t.to_json() for t in table.types])
        else:
            click.echo(format_table(table))
        return
    options = QuantizeOptions(
        imatrix=imatrix,
        threads=threads,
        allow_requantize=allow_requantize,
        leave_output_tensor=leave_output_tensor,
        pure=pure,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        override_kv=tuple(parse_kv_override(item) for item in override_kv),
        tensor_types=tuple(parse_tensor_type(item) for item in tensor_types),
        prune_layers=parse_prune_layers(prune_layers) if prune_layers else (),
        keep_split=keep_split,
    )
    # No INPUT (as split_input decides) inside a workspace: types and paths from ggufkit.toml.
    is_input = bool(args) and (args[0].lower().endswith(".gguf") or Path(args[0]).exists())
    if not is_input:
        from ggufkit.workspace import Workspace, parse_types  # not paid for on the direct path
    workspace = None if is_input else Workspace.find()
    if workspace is not None:
        if output is not None or outdir is not None:
            raise UsageError("-o and --outdir come from ggufkit.toml when INPUT is left out")
        if split.active:
            raise UsageError(
                "in a workspace the split size comes from ggufkit.toml",
                hint='set split_max_size = "50G" there (convert and quantize both use it)',
            )
        if dry_run:
            raise UsageError("--dry-run needs INPUT", hint="give the .gguf file to size")
        steps = workspace.quantize(
            parse_types(",".join(args)) or None, force=force, options=options
        )
        if as_json:
            echo_json([step.to_json() for step in steps])
        else:
            for step in steps:
                click.echo(step.describe())
        return
    from ggufkit.quantize import quantize  # looked up per call, as convert's is

    source, types = split_input(args)
    if source.is_dir():  # a checkpoint: converted to a temporary F16 first
        from ggufkit.quantize.checkpoint import is_checkpoint, quantize_checkpoint

        if dry_run:
            raise UsageError(
                "--dry-run reads a GGUF", hint=f"convert first: ggufkit convert {source}"
            )
        if not is_checkpoint(source):
            raise UsageError(
                f"{source} is a directory without config.json: not a checkpoint nor a GGUF",
                hint="give a .gguf file, or a Hugging Face checkpoint directory",
            )
        converted, results = quantize_checkpoint(
            source,
            types,
            output=output,
            outdir=outdir,
            options=options,
            split=split,
            force=force,
            threads=threads,
        )
        if not as_json:
            click.echo(
                f"{source}: converted to F16 first ({converted.engine} engine; a "
                "temporary file, removed)"
            )
    elif dry_run:
        echo_dry_run(source, types, output, outdir, options, as_json)
        return
    else:
        results = quantize(
            source, types, output=output, outdir=outdir, options=options, split=split, force=force
        )
    if as_json:
        echo_json([r.to_json() for r in results])
        return
    for r in results:
        bpw = f"{r.bits_per_weight:5.2f} bpw" if r.bits_per_weight else "    ? bpw"
        click.echo(f"{r.type:<8} {human_bytes(r.size):>11}  {bpw}  {r.seconds:6.1f} s  {r.output}")
        if r.mix is not None:  # the tensors' real types (a note on stderr says what fell back)
            click.echo(f"{'':<8} tensors: {r.mix.counts_text()}")


def echo_dry_run(
    source: Path,
    types: list[str],
    output: Path | None,
    outdir: Path | None,
    options: QuantizeOptions,
    as_json: bool,
) -> None:
    """--dry-run: each type's size as llama-quantize computes it; nothing is written."""
    from ggufkit.quantize import dry_run

    planned = dry_run(source, types, output=output, outdir=outdir, options=options)
    if as_json:
        echo_json([p.to_json() for p in planned])
        return
    for p in planned:
        size = human_bytes(p.size_bytes) if p.size_bytes is not None else "?"
        bpw = f"{p.bits_per_weight:5.2f} bpw" if p.bits_per_weight else "    ? bpw"
        need = "  (needs --imatrix)" if p.requires_imatrix else ""
        click.echo(f"{p.type:<8} {size:>11}  {bpw}  {p.output} (not written){need}")
