"""`ggufkit download`: fetch a model from the Hugging Face Hub into the standard cache."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option, path_option


@click.command("download")
@click.argument("repo_id")
@click.option("--revision", "-r", default=None, help="Branch, tag or commit sha (default: main).")
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files matching GLOB (replaces the default selection). Repeatable.",
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB. Repeatable."
)
@path_option("--local-dir", kind="dir", help="Put the files in DIR instead of the Hub cache.")
@click.option(
    "--token",
    default=None,
    metavar="TOKEN",
    help="Hub access token (default: HF_TOKEN or the stored `hf auth login`).",
)
@json_option
def command(
    repo_id: str,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    local_dir: Path | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Download REPO_ID (owner/name) from the Hub and print where it is.

    By default only what a conversion needs is fetched: config, tokenizer files and the
    weights (safetensors when the repo has them, else .bin). The cache is the standard one
    (HF_HOME, HF_HUB_CACHE); files already there are not fetched again, and HF_HUB_OFFLINE=1
    uses the cache only. The commit the revision resolved to is printed.

    \b
    Examples:
        ggufkit download TinyLlama/TinyLlama-1.1B-Chat-v1.0
        ggufkit download owner/name --revision v1.0 --local-dir ./name
        ggufkit download owner/name --include "*.json" --include "*.safetensors"
        HF_HUB_OFFLINE=1 ggufkit download owner/name
    """
    from ggufkit.hub import download

    model = download(
        repo_id,
        revision=revision,
        include=include,
        exclude=exclude,
        local_dir=local_dir,
        token=token,
    )
    if as_json:
        echo_json(model.to_json())
        return
    click.echo(f"{model.repo_id} at commit {model.commit or 'unknown'}")
    click.echo(str(model.path))
