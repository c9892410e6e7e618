"""One step of the graph, run the same way by the local scheduler and by a Ray task.

Every step goes through the model's workspace (``<outdir>/<name>/``, its ``manifest.json``): an
output whose inputs (sha256) and options are those recorded is skipped, so a re-run does only what
is missing, and every output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import GGUFKitError
from ggufkit.core.fsutil import write_json_atomic
from ggufkit.core.log import get_logger
from ggufkit.quantize.engines import QuantizeOptions
from ggufkit.workspace.batch.graph import Step
from ggufkit.workspace.batch.plan import BatchPlan, ModelSpec
from ggufkit.workspace.config import WorkspaceConfig
from ggufkit.workspace.imatrix_step import imatrix_path, make_imatrix
from ggufkit.workspace.manifest import file_input
from ggufkit.workspace.recorded import eval_command
from ggufkit.workspace.steps import StepResult, Workspace

log = get_logger("batch")


@dataclass
class StepOutcome:
    step: str
    model: str
    kind: str
    status: str  # built, up to date, failed, skipped
    seconds: float = 0.0
    output: str | None = None
    error: str | None = None
    node: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "skipped")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def workspace(plan: BatchPlan, model: ModelSpec) -> Workspace:
    config = WorkspaceConfig(
        source=model.source,
        name=model.name,
        revision=model.revision,
        delta_base=model.delta_base,
        lora=model.lora,
        outdir=".",
        outtype=plan.outtype,
        engine=model.engine,
        types=list(plan.types),
    )
    return Workspace(plan.model_dir(model), config, exclusive=False)


def eval_path(ws: Workspace) -> Path:
    return ws.outdir / f"{ws.config.name}-eval.json"


def execute(plan: BatchPlan, step: Step, deps: Sequence[StepOutcome] = ()) -> StepOutcome:
    """Run ``step`` (its dependencies' outcomes given); failures become a failed outcome."""
    outcome = StepOutcome(step.id, step.model, step.kind, "failed", node=socket.gethostname())
    broken = [d.step for d in deps if d.failed]
    if broken:
        outcome.status, outcome.error = "skipped", f"after {', '.join(broken)} failed"
        return outcome
    model = next(m for m in plan.models if m.name == step.model)
    started = time.perf_counter()
    try:
        result = _run(plan, model, step)
    except GGUFKitError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in one model's step must not stop the others
        log.debug("%s", traceback.format_exc())
        outcome.error = f"{type(exc).__name__}: {exc}"
    else:
        if isinstance(result, StepResult):
            outcome.status = "up to date" if result.skipped else "built"
            outcome.output = str(result.output)
        else:
            outcome.status = result
    outcome.seconds = round(time.perf_counter() - started, 3)
    return outcome


def _run(plan: BatchPlan, model: ModelSpec, step: Step) -> StepResult | str:
    ws = workspace(plan, model)
    ws.outdir.mkdir(parents=True, exist_ok=True)
    if step.kind == "download":
        config = ws.config
        cached = ws.cached(config.source, config.revision) is not None
        if cached and (config.delta_base is None or ws.cached(config.delta_base) is not None):
            return "up to date"
        ws.source()
        ws.delta_base()
        return "built"
    if step.kind == "convert":
        return ws.convert(chat_template=model.chat_template)
    if step.kind == "imatrix":
        return _imatrix(plan, ws)
    if step.kind == "quantize":
        assert step.qtype is not None
        return _quantize(plan, ws, step)
    if step.kind == "eval":
        return _eval(plan, ws)
    if step.kind == "publish":
        return _publish(plan, ws, model)
    raise ValueError(f"unknown step kind {step.kind}")


def _imatrix(plan: BatchPlan, ws: Workspace) -> StepResult:
    return make_imatrix(ws, plan.imatrix, plan.imatrix.corpus)


def _quantize(plan: BatchPlan, ws: Workspace, step: Step) -> StepResult:
    options = QuantizeOptions(imatrix=imatrix_path(ws) if plan.imatrix.enabled else None)
    assert step.qtype is not None
    return ws.quantize_type(step.qtype, options=options)


def _eval(plan: BatchPlan, ws: Workspace) -> StepResult:
    from ggufkit.data import default_corpus
    from ggufkit.evaluate import evaluate
    from ggufkit.workspace.evals import record_results

    corpus = plan.eval.corpus or default_corpus()
    files = [ws.f16_path, *(ws.quantized_path(t) for t in plan.types)]
    output = eval_path(ws)
    settings = plan.eval
    options = {"ctx": settings.ctx, "chunks": settings.chunks}

    def action() -> object:
        report = evaluate(
            files, corpus=corpus, ctx=settings.ctx, chunks=settings.chunks, speed=False
        )
        write_json_atomic(output, report.to_json())
        record_results(report, ws)
        return None

    command = eval_command(
        ws, files, corpus=corpus, ctx=settings.ctx, chunks=settings.chunks, speed=False
    )
    inputs = [file_input(f) for f in files] + [file_input(corpus, role="corpus")]
    return ws.run_step(
        "eval", output, inputs=inputs, options=options, command=command, action=action
    )


def _publish(plan: BatchPlan, ws: Workspace, model: ModelSpec) -> str:
    """Upload the model's files and card (``ggufkit publish``); a re-run sends only what changed."""
    from ggufkit.workspace.publish import publish

    assert plan.publish is not None
    publication = publish(ws, plan.publish.repo_for(model.name), private=plan.publish.private)
    return "built" if publication.result.uploaded else "up to date"
