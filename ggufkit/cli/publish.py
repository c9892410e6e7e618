"""`ggufkit publish`: a workspace's GGUF files and a generated model card to a Hub repo."""

from __future__ import annotations

import click

from ggufkit.cli.options import echo_json, json_option, upload_options
from ggufkit.cli.upload import describe_result


@click.command("publish")
@click.argument("repo_id")
@click.option(
    "--base-model",
    default=None,
    metavar="REPO_ID",
    help="The card's base_model when the workspace's source is a local folder.",
)
@upload_options
@json_option
def command(
    repo_id: str,
    base_model: str | None,
    revision: str | None,
    private: bool,
    token: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Upload every model file the workspace made, with a model card (README.md) that carries
    the measured table (`ggufkit eval`), the provenance and ready-to-paste usage.

    \b
    Examples:
        ggufkit init ./tiny && ggufkit convert && ggufkit quantize q4_0 q8_0 && ggufkit eval
        ggufkit publish me/tiny-GGUF --dry-run       # the files, the card, the total size
        ggufkit publish me/tiny-GGUF --base-model me/tiny
    """
    from ggufkit.workspace import Workspace
    from ggufkit.workspace.publish import publish

    done = publish(
        Workspace.require(takes_model=False),
        repo_id,
        token=token,
        revision=revision,
        private=private,
        base_model=base_model,
        dry_run=dry_run,
    )
    if as_json:
        echo_json(
            {**done.result.to_json(), "total_bytes": done.plan.total_bytes, "card": done.plan.card}
        )
    elif dry_run:
        click.echo(done.plan.describe())
        click.echo("\n--- README.md ---")
        click.echo(done.plan.card or "")
    else:
        click.echo(describe_result(done.result))
