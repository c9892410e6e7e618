"""`ggufkit status`: each step of the workspace, its artefact, and whether it is up to date."""

from __future__ import annotations

import click

from ggufkit.cli.options import echo_json, json_option


@click.command("status")
@json_option
def command(as_json: bool) -> None:
    """Show the workspace's steps and artefacts (`--json`: print out/manifest.json).

    Nothing is downloaded or built: a Hub source not yet downloaded shows as such.

    \b
    Examples:
        ggufkit status
        ggufkit status --json | jq '.artefacts[] | {path, sha256}'
    """
    from ggufkit.core.fsutil import human_bytes
    from ggufkit.workspace import Workspace
    from ggufkit.workspace.manifest import Manifest

    workspace = Workspace.require(takes_model=False)
    if as_json:
        echo_json(Manifest.load(workspace.manifest_path).data)
        return
    config = workspace.config
    click.echo(f"workspace {workspace.root}")
    for label, ref, revision in (
        ("source", config.source, config.revision),
        ("delta base", config.delta_base, None),
    ):
        if ref is not None:
            model = workspace.cached(ref, revision)
            where = "not downloaded" if model is None else "local"
            if model is not None and model.is_hub:
                where = f"cached at {model.commit}"
            click.echo(f"  {label:<16} {ref} ({where})")
    for state in workspace.status():
        line = f"  {state.label:<16} {workspace.relative(state.output):<32} {state.state}"
        record = state.record
        if record and state.state != "missing":
            size, sha = human_bytes(record.get("size", 0)), str(record.get("sha256"))[:12]
            line += f"  {size}  sha256 {sha}  made {record.get('started', '?')}"
            line += f" in {record.get('seconds', 0):.1f} s"
        click.echo(line)
