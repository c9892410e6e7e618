"""`ggufkit build`: fetch, verify and build the pinned llama.cpp (cached; a second run is a no-op)."""

from __future__ import annotations

import json
import shlex

import click

from ggufkit.cli.options import echo_json, json_option
from ggufkit.llamacpp.build import configure_command
from ggufkit.llamacpp.layout import BuildOptions
from ggufkit.selftest import build_and_test


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
@click.option(
    "--portable",
    is_flag=True,
    help="Build every CPU variant and pick one at run time, as llama.cpp's releases do: for a "
    "GGUFKIT_HOME shared by machines with different CPUs (NFS, images, clusters). Slower to "
    "build (about 15 min on 2 cores).",
)
@click.option(
    "--amx",
    is_flag=True,
    help="Keep ggml's Intel AMX kernels. Off by default: at the pinned llama.cpp they crash "
    "(SIGILL) on q8_0/q4_0 models because tile-data permission is requested for the main thread "
    "only. Use it only where you know your kernel and build run them.",
)
@click.option(
    "--self-test/--no-self-test",
    default=True,
    help="After building, run the embedded tiny-llama through convert, quantize, perplexity and "
    "the bindings (seconds; cached in the build stamp). Default: on.",
)
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the CMake configure command for these options and stop (nothing is built).",
)
@json_option
def command(
    jobs: int | None,
    force: bool,
    cuda: bool,
    metal: bool | None,
    portable: bool,
    amx: bool,
    self_test: bool,
    cmake_args: tuple[str, ...],
    bindings: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Build the pinned llama.cpp with CMake, once.

    The source comes from the llama-cpp-python sdist named in llama.cpp.lock (verified by sha256).
    Builds are cached under GGUFKIT_HOME by source, patches, flags, platform and, for a native
    build, the CPU's instruction-set features. Every new build tests itself (see --self-test);
    a crash there fails the build with the signal named and the remedy.

    \b
    By CPU:
      x86 without AMX, Arm, Apple: tuned for this CPU (-march=native).
      x86 with AMX (4th-gen Xeon and later): the same, minus the AMX kernels (see --amx).
      Machines sharing one GGUFKIT_HOME with different CPUs: each gets its own native build;
      --portable makes one that runs on all of them.

    \b
    Examples:
        ggufkit build
        ggufkit build --cuda -j 8
        ggufkit build --cmake-arg -DGGML_VULKAN=ON
        ggufkit build --portable
        ggufkit build --cuda --dry-run
    """
    options = BuildOptions(
        cuda=cuda, metal=metal, native=not portable, extra_cmake_args=cmake_args, amx=amx
    )
    if dry_run:
        argv = configure_command(options)
        click.echo(json.dumps(argv) if as_json else shlex.join(argv))
        return
    info, selftest = build_and_test(
        options, jobs=jobs, force=force, bindings=bindings, selftest=self_test
    )
    if as_json:
        echo_json(info.to_json())
        return
    state = "up to date (cached)" if info.cached else f"built in {info.seconds:.0f} s"
    click.echo(f"llama.cpp {info.llama_cpp_commit}: {state}")
    click.echo(f"  build:   {info.build_dir}")
    click.echo(f"  CPU:     {info.cpu}" + (" (portable: all CPU variants)" if portable else ""))
    click.echo(f"  library: {info.library}")
    click.echo(f"  self-test: {selftest.summary() if selftest else 'not run (--no-self-test)'}")
    for name, path in info.tools.items():
        click.echo(f"  {name}: {path}")
