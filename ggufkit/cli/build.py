"""`ggufkit build`: fetch, verify and build the pinned llama.cpp (cached; a second run is a no-op)."""

from __future__ import annotations

import click

from ggufkit.cli.options import echo_json, json_option
from ggufkit.llamacpp.build import build
from ggufkit.llamacpp.layout import BuildOptions


@click.command("build")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel compile jobs (default: cores).",
)
@click.option("--force", is_flag=True, help="Rebuild even when a cached build exists.")
@click.option("--cuda", is_flag=True, help="Build the CUDA backend (-DGGML_CUDA=ON).")
@click.option("--metal/--no-metal", default=None, help="Force the Metal backend on or off (macOS).")
@click.option("--portable", is_flag=True, help="Do not tune for this CPU (-DGGML_NATIVE=OFF).")
@click.option(
    "--cmake-arg",
    "cmake_args",
    multiple=True,
    metavar="ARG",
    help="Extra CMake argument, e.g. -DGGML_VULKAN=ON. Repeatable.",
)
@click.option(
    "--bindings/--no-bindings",
    default=True,
    help="Install llama-cpp-python against this build (default: on).",
)
@json_option
def command(
    jobs: int | None,
    force: bool,
    cuda: bool,
    metal: bool | None,
    portable: bool,
    cmake_args: tuple[str, ...],
    bindings: bool,
    as_json: bool,
) -> None:
    """Build the pinned llama.cpp with CMake, once.

    The source comes from the llama-cpp-python sdist named in llama.cpp.lock (verified by sha256).
    Builds are cached under GGUFKIT_HOME by source, flags and platform.

    \b
    Examples:
        ggufkit build
        ggufkit build --cuda -j 8
        ggufkit build --cmake-arg -DGGML_VULKAN=ON
    """
    options = BuildOptions(cuda=cuda, metal=metal, native=not portable, extra_cmake_args=cmake_args)
    info = build(options, jobs=jobs, force=force, bindings=bindings)
    if as_json:
        echo_json(info.to_json())
        return
    state = "up to date (cached)" if info.cached else f"built in {info.seconds:.0f} s"
    click.echo(f"llama.cpp {info.llama_cpp_commit}: {state}")
    click.echo(f"  build:   {info.build_dir}")
    click.echo(f"  library: {info.library}")
    for name, path in info.tools.items():
        click.echo(f"  {name}: {path}")
