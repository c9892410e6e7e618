"""The ``ggufkit`` command: a root group that only wires the command modules.

Each command lives in ``ggufkit/cli/<module>.py`` as a click command named ``command`` and is
imported only when it runs (or when help lists it), so ``ggufkit --help`` stays fast.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import sys
from typing import Any

import click

from ggufkit import __version__
from ggufkit.core.errors import GGUFKitError, exit_code_for, format_error
from ggufkit.core.log import setup_logging
from ggufkit.core.text import printable

# command name -> module under ggufkit.cli
COMMANDS: dict[str, str] = {
    "download": "download",
    "init": "init",
    "status": "status",
    "merge-delta": "merge_delta",
    "make-delta": "make_delta",
    "merge-lora": "merge_lora",
    "convert-lora": "convert_lora",
    "convert": "convert",
    "families": "families",
    "build": "build",
    "doctor": "doctor",
    "quantize": "quantize",
    "imatrix": "imatrix",
    "eval": "eval",
    "bench": "bench",
    "run": "run",
    "inspect": "inspect",
    "verify": "verify",
    "bnb": "bnb",
    "compare": "compare",
    "demo": "demo",
    "batch": "batch",
    "upload": "upload",
    "publish": "publish",
}


VERBOSE_HELP = "More log output (-vv for debug)."
QUIET_HELP = "Only warnings and errors; no progress bars, no llama.cpp or tokenizers chatter."


class CommandFailed(click.ClickException):
    """A GGUFKitError on its way out of click, keeping the error's exit code."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(printable(format_error(error), keep_lines=True))
        self.exit_code = exit_code_for(error)  # type: ignore[misc]  # per error, not per class


class RootGroup(click.Group):
    # Only in ggufkit's own process (`main`): inside a caller's (CliRunner, an embedding program)
    # a freeze would also pin the caller's uncollected garbage for good.
    freeze_imports = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in COMMANDS.items() if _module_exists(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = COMMANDS.get(name)
        if module_name is None:
            return None
        module = importlib.import_module(f"ggufkit.cli.{module_name}")
        if self.freeze_imports:
            # What is imported by now lives as long as the process: out of the collector's reach,
            # no later collection (nor the last one, at exit) walks it again: ~15 ms of a quick
            # command such as quantize (benchmarks/bench_quantize.py).
            gc.freeze()
        command: click.Command = module.command
        if not any(p.name == "quiet" for p in command.params):
            command.params += _root_options()  # -q/-v after the command name too
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (GGUFKitError, KeyboardInterrupt) as error:
            if debug_enabled():
                import traceback

                traceback.print_exc()
            raise CommandFailed(error) from error
        except Exception as error:
            if debug_enabled():
                raise
            raise CommandFailed(error) from error


def _root_options() -> list[click.Parameter]:
    """``-q``/``-v`` as every command reads them, so that they work after its name too."""

    def apply(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if ctx.get_parameter_source(param.name or "") == click.core.ParameterSource.COMMANDLINE:
            quiet = param.name == "quiet"
            setup_logging(-1 if quiet else int(value))

    common: dict[str, Any] = {"expose_value": False, "callback": apply, "is_eager": True}
    return [
        click.Option(["-v", "--verbose"], count=True, help=VERBOSE_HELP, **common),
        click.Option(["-q", "--quiet"], is_flag=True, help=QUIET_HELP, **common),
    ]


def _module_exists(module: str) -> bool:
    return importlib.util.find_spec(f"ggufkit.cli.{module}") is not None


def debug_enabled() -> bool:
    return os.environ.get("GGUFKIT_DEBUG", "") not in ("", "0")


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ggufkit")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
def cli(verbose: int, quiet: bool) -> None:
    """Hugging Face checkpoints to llama.cpp GGUF files, and proof that they are right.

    \b
    A typical run:
        ggufkit build                       # the pinned llama.cpp, once
        ggufkit convert ./my-model -o my-model-f16.gguf
        ggufkit quantize my-model-f16.gguf q4_0 q8_0
        ggufkit eval my-model-f16.gguf my-model-Q4_0.gguf
    """
    setup_logging(-1 if quiet else verbose)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # ggufkit does no linear algebra in numpy; OpenBLAS's worker threads would only spin at
    # start-up (0.1 s of CPU measured) on the cores a conversion needs. A user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    RootGroup.freeze_imports = True
    try:
        cli.main(args=argv, prog_name="ggufkit", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - click normally handles this
        click.echo(format_error(KeyboardInterrupt()), err=True)
        sys.exit(130)
