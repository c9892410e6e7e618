"""`ggufkit doctor`: report the toolchain, the build, the bindings and the optional extras."""

from __future__ import annotations

import click

from ggufkit.cli.options import echo_json, json_option
from ggufkit.doctor import diagnose


@click.command("doctor")
@json_option
def command(as_json: bool) -> None:
    """Check Python, compiler, cmake, the pinned llama.cpp, its build and bindings, torch,
    bitsandbytes, disk, memory and GPU; print the fix for anything missing.

    Exits 1 when something required is missing.

    \b
    Examples:
        ggufkit doctor
        ggufkit doctor --json
    """
    checks = diagnose()
    if as_json:
        echo_json([check.to_json() for check in checks])
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            mark = "ok " if check.ok else ("MISSING" if check.required else "-- ")
            line = f"{mark:7} {check.name:<{width}}  {check.detail}"
            if check.fix and not check.ok:
                line += f"\n{'':7} {'':<{width}}  fix: {check.fix}"
            click.echo(line)
    if any(check.required and not check.ok for check in checks):
        raise click.exceptions.Exit(1)
