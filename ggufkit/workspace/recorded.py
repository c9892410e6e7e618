"""The command lines a workspace records for its steps, rendered from the CLI's own options
(:func:`ggufkit.core.cmdline.command_line`), never spelled by hand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ggufkit.core.cmdline import command_line
from ggufkit.workspace.config import WorkspaceConfig

if TYPE_CHECKING:
    from ggufkit.quantize import QuantizeOptions


class Workspace(Protocol):  # what of ggufkit.workspace.steps.Workspace these lines use
    config: WorkspaceConfig

    @property
    def f16_path(self) -> Path: ...

    def relative(self, path: Path) -> str: ...


def convert_command(
    ws: Workspace,
    model: str,
    base: str | None,
    engine: str,
    chat_template: str | None,
    lora: str | None = None,
) -> list[str]:
    return command_line(
        "convert",
        model=model,
        output=Path(ws.relative(ws.f16_path)),
        outtype=ws.config.outtype,
        delta_base=base,
        lora=Path(lora) if lora is not None else None,
        engine=engine,
        chat_template=chat_template,
        split_max_size=ws.config.split_max_size,
    )


def quantize_command(
    ws: Workspace, source: Path, qtype: str, output: Path, options: QuantizeOptions
) -> list[str]:
    return command_line(
        "quantize",
        args=(ws.relative(source), qtype),
        output=Path(ws.relative(output)),
        split_max_size=ws.config.split_max_size,
        **quantize_values(options),
    )


def quantize_values(options: QuantizeOptions) -> dict[str, Any]:
    """``quantize``'s parameter values for these options (the CLI's names are the fields')."""
    return {
        "imatrix": options.imatrix,
        "allow_requantize": options.allow_requantize,
        "leave_output_tensor": options.leave_output_tensor,
        "pure": options.pure,
        "output_tensor_type": options.output_tensor_type,
        "token_embedding_type": options.token_embedding_type,
        "override_kv": tuple(str(kv) for kv in options.override_kv),
    }


def imatrix_command(
    ws: Workspace, corpus: Path, output: Path, ctx: int | None, chunks: int | None
) -> list[str]:
    return command_line(
        "imatrix",
        model=Path(ws.relative(ws.f16_path)),
        corpus=corpus,
        output=Path(ws.relative(output)),
        ctx=ctx,
        chunks=chunks,
    )


def eval_command(ws: Workspace, files: list[Path], **values: Any) -> list[str]:
    return command_line("eval", models=tuple(Path(ws.relative(f)) for f in files), **values)
