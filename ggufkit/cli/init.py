"""`ggufkit init`: write a ggufkit.toml so that later commands need no arguments."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import outtype_option, path_option


@click.command("init")
@click.argument("source")
@click.option(
    "--delta-base",
    "delta_base",
    metavar="BASE",
    default=None,
    help="SOURCE is a delta: add it to BASE (a directory or Hub id) before converting.",
)
@click.option("--name", default=None, help="Output file stem (default: SOURCE's last path part).")
@click.option(
    "--types",
    default="q4_0",
    show_default=True,
    metavar="T1,T2",
    help="Quantization types `ggufkit quantize` makes by default.",
)
@path_option(
    "--outdir", kind="dir", default=None, help="Where outputs and manifest.json go (default: out)."
)
@outtype_option
@click.option("--revision", "-r", default=None, help="Hub branch, tag or commit sha (Hub sources).")
@click.option("--force", is_flag=True, help="Replace an existing ggufkit.toml.")
def command(
    source: str,
    delta_base: str | None,
    name: str | None,
    types: str,
    outdir: Path | None,
    outtype: str,
    revision: str | None,
    force: bool,
) -> None:
    """Create a workspace here: ggufkit.toml names the model, outputs and types.

    SOURCE is a model directory or a Hugging Face Hub id (owner/name); nothing is downloaded
    yet. Afterwards `ggufkit convert` and `ggufkit quantize` need no arguments, skip steps
    whose inputs have not changed, and record everything in OUTDIR/manifest.json.

    \b
    Examples:
        ggufkit init TinyLlama/TinyLlama-1.1B-Chat-v1.0 --types q4_0,q8_0
        ggufkit convert && ggufkit quantize q4_0
        ggufkit init ./vicuna-delta --delta-base ./llama-7b --name vicuna-7b
        ggufkit status
    """
    from ggufkit.workspace import init_workspace, parse_types

    path = init_workspace(
        Path.cwd(),
        source,
        delta_base=delta_base,
        name=name,
        types=parse_types(types),
        outdir=outdir.as_posix() if outdir is not None else "out",
        outtype=outtype,
        revision=revision,
        force=force,
    )
    click.echo(f"wrote {path}")
    click.echo("next: ggufkit convert && ggufkit quantize")
