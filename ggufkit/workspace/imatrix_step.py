"""The importance-matrix step: ``[imatrix]`` in ggufkit.toml or in a batch plan. Made from the
converted file on a calibration text, recorded like any step, used by every quantize."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ggufkit.workspace.manifest import file_input
from ggufkit.workspace.recorded import imatrix_command
from ggufkit.workspace.step_results import StepResult


class Settings(Protocol):  # ggufkit.toml's [imatrix] (corpus resolved) or a plan's StepSettings
    @property
    def ctx(self) -> int: ...

    @property
    def chunks(self) -> int | None: ...


def imatrix_path(ws: Any) -> Path:
    return Path(ws.outdir) / f"{ws.config.name}-imatrix.gguf"


def make_imatrix(ws: Any, settings: Settings, corpus: Path | None) -> StepResult:
    """Bring ``<outdir>/<name>-imatrix.gguf`` up to date for the workspace ``ws`` (a
    :class:`~ggufkit.workspace.steps.Workspace`); ``corpus`` None: the embedded calibration
    text."""
    from ggufkit.data import calibration_corpus
    from ggufkit.quantize.imatrix import compute_imatrix

    corpus = corpus or calibration_corpus()
    output = imatrix_path(ws)
    options = {"ctx": settings.ctx, "chunks": settings.chunks}
    return ws.run_step(
        "imatrix",
        output,
        inputs=[file_input(ws.f16_path), file_input(corpus, role="corpus")],
        options=options,
        command=imatrix_command(ws, corpus, output, settings.ctx, settings.chunks),
        action=lambda: compute_imatrix(
            ws.f16_path, corpus, output=output, ctx_size=settings.ctx, chunks=settings.chunks
        ),
    )
