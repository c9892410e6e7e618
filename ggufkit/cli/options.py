"""Options shared by several commands, and compact builders for the common kinds of option."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from ggufkit.core.cmdline import remember

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

SHIPPED_TEXT = "the held-out text shipped with ggufkit"


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
    )(func)


def threads_option(func: F) -> F:
    return click.option(
        "--threads",
        "-t",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads (default: all cores).",
    )(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_result(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    """A result on stdout: its ``to_json()`` with --json, else ``text(result)``."""
    click.echo(json.dumps(result.to_json(), indent=2, default=str) if as_json else text(result))


# --- builders: one line per option in the commands ----------------------------------------------


def count_option(*decls: str, default: int | None = None, minimum: int = 1, **kw: Any) -> Decorator:
    """An integer option of at least ``minimum``; a default is shown in --help."""
    kw.setdefault("show_default", default is not None)
    return click.option(*decls, type=click.IntRange(min=minimum), default=default, **kw)


def choice_option(*decls: str, choices: Any, default: str | None = None, **kw: Any) -> Decorator:
    """One of ``choices``; a default is shown in --help."""
    kw.setdefault("show_default", default is not None)
    kw.setdefault("case_sensitive", True)
    choice = click.Choice(list(choices), case_sensitive=kw.pop("case_sensitive"))
    return click.option(*decls, type=choice, default=default, **kw)


def path_option(*decls: str, kind: str = "any", **kw: Any) -> Decorator:
    """A path option; ``kind`` is ``file``, ``dir`` or ``any``."""
    return click.option(*decls, type=_path(kind), **kw)


def path_argument(name: str, kind: str = "any", **kw: Any) -> Decorator:
    return click.argument(name, type=_path(kind), **kw)


def _path(kind: str) -> click.Path:
    return click.Path(path_type=Path, file_okay=kind != "dir", dir_okay=kind != "file")


lora_option = path_option(
    "--lora",
    kind="file",
    help="A LoRA adapter GGUF (`ggufkit convert-lora`) that llama.cpp applies at run time.",
)


def force_option(help: str) -> Decorator:
    return click.option("--force", is_flag=True, help=help)


def output_option(help: str, *, kind: str = "any", required: bool = False) -> Decorator:
    return path_option("-o", "--output", kind=kind, required=required, default=None, help=help)


def outtype_option(func: F) -> F:
    """The converted file's type, in convert and init."""
    return choice_option(
        "--outtype",
        choices=["f16", "bf16", "f32", "q8_0"],
        default="f16",
        case_sensitive=False,
        help="Type of the 2-D weights; 1-D tensors and norms stay f32.",
    )(func)


def plot_option(help: str) -> Decorator:
    return path_option("--plot", kind="file", default=None, help=help)


def model_ref_option(name: str, help: str) -> Decorator:
    """``--base``/``--delta``/``--target``: a model directory or a Hub id, required."""
    return click.option(f"--{name}", required=True, metavar=name.upper(), help=help)


# --- perplexity over a text: the same three options in eval, bnb and imatrix --------------------


def corpus_option(help: str | None = None, *, required: bool = False) -> Decorator:
    help = help or f"Plain text for perplexity (default: {SHIPPED_TEXT})."
    return path_option("--corpus", "-f", kind="file", required=required, help=help)


def ctx_option(
    help: str | None = None, *, default: int | None = None, minimum: int = 16
) -> Decorator:
    help = help or "Tokens per chunk (default 512, lowered to fit a short corpus)."
    return count_option("--ctx", "-c", default=default, minimum=minimum, help=help)


def chunks_option(func: F) -> F:
    return count_option("--chunks", help="Chunks to score at most (default: all).")(func)


def speed_option(func: F) -> F:
    return click.option(
        "--speed/--no-speed", default=True, help="Run llama-bench too (default: on)."
    )(func)


def device_option(func: F) -> F:
    """--device cpu|gpu: the backend of every llama.cpp tool and of the bindings in this command
    (-ngl 0 or all layers), so that perplexity, speed and parity measure the same one."""

    def apply(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        from ggufkit.llamacpp.device import use_device

        remember(ctx, "device", value)
        if value == "gpu":
            _check_gpu_build()
        ctx.with_resource(use_device("gpu" if value == "gpu" else "cpu" if value else None))

    return click.option(
        "--device",
        type=DeviceChoice(),
        default=None,
        envvar="GGUFKIT_DEVICE",
        expose_value=False,
        callback=apply,
        help="Compute on the CPU (default) or offload every layer to the GPU; the same for "
        "every llama.cpp tool and llama-cpp-python. Env: GGUFKIT_DEVICE.",
    )(func)


def flash_attn_option(func: F) -> F:
    """--flash-attn auto|on|off: one attention kernel for every llama.cpp tool and the bindings
    in this command (it changes the numbers, not only the speed)."""

    def apply(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        from ggufkit.llamacpp.attention import use_flash_attn

        remember(ctx, "flash_attn", value)
        ctx.with_resource(use_flash_attn(value))  # type: ignore[arg-type]

    return click.option(
        "--flash-attn",
        type=click.Choice(["auto", "on", "off"]),
        default=None,
        envvar="GGUFKIT_FLASH_ATTN",
        expose_value=False,
        callback=apply,
        help="Flash attention for llama.cpp's tools and llama-cpp-python alike: auto (llama.cpp's "
        "default: on for the CPU), on or off. Env: GGUFKIT_FLASH_ATTN.",
    )(func)


def _check_gpu_build() -> None:
    from ggufkit.core.errors import GGUFKitError
    from ggufkit.llamacpp.build import current_build
    from ggufkit.llamacpp.device import has_gpu_backend

    try:
        info = current_build()
    except GGUFKitError:
        return  # not built: the command itself says so
    if not has_gpu_backend(info.options, info.platform):
        raise click.BadParameter(
            "the current llama.cpp build has no GPU backend; build one with "
            "`ggufkit build --cuda` (NVIDIA) or `--metal` (Apple), or use --device cpu",
            param_hint="--device",
        )


def split_options(func: F) -> F:
    """``--split-max-size`` / ``--split-max-tensors``: write a split set (llama.cpp's naming)."""
    func = click.option(
        "--split-max-tensors",
        type=click.IntRange(min=1),
        default=None,
        help="Split the output: at most N tensors a file.",
    )(func)
    return click.option(
        "--split-max-size",
        metavar="SIZE",
        default=None,
        help="Split the output into files of at most SIZE tensor data (e.g. 2M, 50G).",
    )(func)


def upload_options(func: F) -> F:
    """``--revision``, ``--private``, ``--token``, ``--dry-run`` of ``upload`` and ``publish``."""
    for decorator in reversed(
        (
            click.option(
                "--revision", "-r", default=None, help="Branch (default: main; made when new)."
            ),
            click.option("--private", is_flag=True, help="Create the repo private."),
            click.option(
                "--token",
                default=None,
                metavar="TOKEN",
                help="Hub token with write access (default: HF_TOKEN or the stored login).",
            ),
            click.option("--dry-run", is_flag=True, help="Print what would be uploaded, and stop."),
        )
    ):
        func = decorator(func)
    return func


def parse_fraction(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``1%`` or ``0.01`` -> 0.01; a percentage or fraction strictly between 0 and 1."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or a percentage (e.g. 1%)") from None
    if not 0 < number < 1:
        raise click.BadParameter(f"{value!r} must be between 0 and 100%")
    return number


# --- one spelling per meaning (docs/options.md; tests/test_options.py walks every command) --------


class DeviceChoice(click.Choice):
    """``cpu`` or ``gpu``, as every command spells the device; ``bnb``'s earlier ``auto`` (the
    default), ``cuda`` and ``cuda:N`` are still read, with a warning."""

    LEGACY: ClassVar[dict[str, str | None]] = {"auto": None, "cuda": "gpu"}

    def __init__(self) -> None:
        super().__init__(["cpu", "gpu"])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower() if value is not None else ""
        if text in self.LEGACY or text.startswith("cuda:"):
            new = self.LEGACY.get(text, text)
            _warn(f"--device {text} is deprecated; use --device {new or 'cpu|gpu'}")
            return new if text != "auto" else None
        return super().convert(value, param, ctx)


def deprecated_alias(old: str, new: str, name: str, **kw: Any) -> Decorator:
    """A hidden option ``old`` read as the option ``new`` (Python name ``name``), with a warning:
    an earlier spelling kept for scripts. Put it directly under ``@click.command``."""
    hidden = "_deprecated_" + old.lstrip("-").replace("-", "_")

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(**values: Any) -> Any:
            value = values.pop(hidden)
            if value is not None:
                _warn(f"{old} is deprecated; use {new}")
                values[name] = value
            return func(**values)

        option = click.option(old, hidden, hidden=True, default=None, expose_value=True, **kw)
        return option(wrapper)  # type: ignore[return-value]

    return decorate


def _warn(message: str) -> None:
    from ggufkit.core.log import get_logger

    get_logger("cli").warning(message)


def repetitions_option(func: F) -> F:
    from ggufkit.evaluate.speed import DEFAULT_REPETITIONS

    return count_option(
        "--repetitions",
        default=DEFAULT_REPETITIONS,
        help="Runs of each speed test (mean ± standard deviation).",
    )(func)


def speed_size_options(func: F) -> F:
    """``--prompt-tokens`` / ``--gen-tokens``: llama-bench's test sizes, in bench and eval."""
    from ggufkit.evaluate.speed import DEFAULT_GEN, DEFAULT_PROMPT

    func = count_option(
        "--gen-tokens", default=DEFAULT_GEN, minimum=0, help="Tokens to generate (0: skip)."
    )(func)
    return count_option(
        "--prompt-tokens",
        default=DEFAULT_PROMPT,
        minimum=0,
        help="Prompt length to process (0: skip).",
    )(func)
