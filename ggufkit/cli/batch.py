"""`ggufkit batch`: a plan of many models × types, here or on an existing Ray cluster."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_json, json_option


@click.command("batch")
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Print the step graph and its estimates; run nothing."
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    default=None,
    help="Run the steps as tasks on this existing Ray cluster (e.g. auto, or HOST:6379).",
)
@click.option(
    "--portable",
    is_flag=True,
    help="With --ray: each node uses the portable llama.cpp build (mixed CPUs).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Locally: at most this many steps at once (default: the CPU count).",
)
@json_option
def command(
    plan: Path,
    dry_run: bool,
    ray_address: str | None,
    portable: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Run a batch.toml: each model downloaded, converted, quantized to every type, and
    optionally given an importance matrix, evaluated and published.

    Locally (the default) as many steps run at once as the memory and disk budget allows;
    with --ray the same steps are tasks on an existing Ray cluster (pip install
    "ggufkit[ray]"), whose nodes share the plan's folders. Up-to-date steps are skipped
    through each model's manifest, so a re-run does only what is missing. A failed model
    does not stop the others; OUTDIR/batch-summary.md and .json name it. Exit code 1 when
    any model failed.

    \b
    Examples:
        ggufkit batch batch.toml --dry-run
        ggufkit batch batch.toml
        ggufkit batch batch.toml --ray auto
    """
    from ggufkit.core.errors import UsageError, WorkspaceError
    from ggufkit.workspace.batch import build_graph, format_graph, load_plan, run_batch

    if portable and ray_address is None:
        raise UsageError("--portable applies to --ray runs", hint="drop --portable, or add --ray")
    loaded = load_plan(plan)
    if dry_run:
        steps = build_graph(loaded)
        if as_json:
            echo_json([{**s.__dict__, "deps": list(s.deps)} for s in steps])
        else:
            click.echo(format_graph(steps))
        return
    summary = run_batch(loaded, ray_address=ray_address, portable=portable, max_parallel=jobs)
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(summary.markdown(), nl=False)
    if not summary.ok:
        failed = ", ".join(summary.failed_models)
        raise WorkspaceError(
            f"{len(summary.failed_models)} model(s) failed: {failed}",
            hint=f"see {loaded.outdir / 'batch-summary.md'}; fix and re-run (done steps are skipped)",
        )


def _with_plan_format(help_text: str) -> str:
    """The command's help and the plan's format (``workspace/batch/plan.py``'s example)."""
    from ggufkit.workspace.batch import plan

    doc = (plan.__doc__ or "").split("Example::", 1)[-1]
    paragraphs = [p for p in doc.strip("\n").split("\n\n") if p.strip()]
    shown = "\n\n".join("\b\n" + p for p in paragraphs)
    import textwrap

    # the docstring's own indentation, so that click dedents both alike
    added = textwrap.indent(f"The plan (batch.toml), for example:\n\n{shown}", "    ")
    return f"{help_text}\n\n{added}"


command.help = _with_plan_format(command.help or "")
