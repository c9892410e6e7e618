"""`ggufkit upload`: GGUF files (split sets whole) to a Hub repo."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option, upload_options


@click.command("upload")
@click.argument("repo_id")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@upload_options
@json_option
def command(
    repo_id: str,
    files: tuple[Path, ...],
    revision: str | None,
    private: bool,
    token: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Upload FILES to the Hub repo REPO_ID (owner/name), creating it when missing.

    The first shard of a split set (NAME-00001-of-0000N.gguf) brings every shard. Large files go
    to the Hub's large file store first; a run that was cut off is finished by running it again,
    and files the repo already holds unchanged are not sent again. The token is never printed.

    \b
    Examples:
        ggufkit upload me/tiny-GGUF tiny-Q4_0.gguf tiny-Q8_0.gguf
        ggufkit upload me/big-GGUF big-Q4_K_M-00001-of-00003.gguf --private
        ggufkit upload me/tiny-GGUF tiny-Q4_0.gguf --revision test --dry-run
    """
    from ggufkit.hub.upload import plan_upload, upload

    plan = plan_upload(repo_id, files, revision=revision, private=private)
    result = upload(plan, token=token, dry_run=dry_run)
    if as_json:
        echo_json({**result.to_json(), "total_bytes": plan.total_bytes})
    elif dry_run:
        click.echo(plan.describe())
    else:
        click.echo(describe_result(result))


def describe_result(result: object) -> str:
    """The lines an upload prints: the commit, what was sent and what was already there."""
    from ggufkit.hub.upload import UploadResult

    assert isinstance(result, UploadResult)
    lines = [f"{result.repo_id}@{result.revision} at commit {result.commit}"]
    lines += [f"  uploaded   {name}" for name in result.uploaded]
    lines += [f"  unchanged  {name}" for name in result.unchanged]
    return "\n".join(lines)
