"""`ggufkit families`: which architectures are proven at this pin (the measured matrix)."""

from __future__ import annotations

import click

from ggufkit.cli.options import echo_json, json_option
from ggufkit.convert.families import STATUS_WORDS, TABLE_DOC, load_matrix


@click.command("families")
@json_option
@click.option(
    "--status",
    "status",
    type=click.Choice(sorted(STATUS_WORDS)),
    help="Only the architectures with this status.",
)
@click.argument("architecture", required=False)
def command(as_json: bool, status: str | None, architecture: str | None) -> None:
    """Show, for every text architecture that transformers and the pinned converter share,
    whether a converted tiny checkpoint computes what transformers computes (the table of
    docs/architectures.md, measured at this pin by `python tools/dev.py families`).

    \b
    Examples:
        ggufkit families
        ggufkit families Qwen3ForCausalLM
        ggufkit families --status proven --json
    """
    matrix = load_matrix()
    rows = [
        row
        for row in matrix["rows"]
        if (status is None or row["status"] == status)
        and (architecture is None or row["name"].split(" (")[0] == architecture)
    ]
    if architecture is not None and not rows:
        raise click.BadParameter(
            f"{architecture!r} is not in the matrix of this pin (see {TABLE_DOC})",
            param_hint="ARCHITECTURE",
        )
    if as_json:
        echo_json({"pins": matrix.get("pins", {}), "rows": rows})
        return
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        word = STATUS_WORDS.get(row["status"], row["status"])
        if row["status"] == "proven":
            detail = f"f16 Δ {100 * row['rel_diff']:.3f}%, argmax {100 * row['argmax']:.0f}%"
        else:
            detail = row.get("cause", "")
        click.echo(f"{row['name']:<{width}}  {word:<22}  {detail}")
    if architecture is None:
        proven = sum(row["status"] == "proven" for row in matrix["rows"])
        pins = matrix.get("pins", {})
        click.echo(
            f"{proven} of {len(matrix['rows'])} proven at transformers "
            f"{pins.get('transformers', '?')}, llama.cpp {pins.get('llama_cpp', '?')} "
            f"(see {TABLE_DOC})",
            err=True,
        )
