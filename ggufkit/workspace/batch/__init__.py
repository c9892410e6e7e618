"""``ggufkit batch``: many models × many types, on this machine or on an existing Ray cluster.

``load_plan`` reads ``batch.toml``; ``build_graph`` makes its steps (download → convert → imatrix →
quantize × types → eval → publish) with estimated costs; ``run_batch`` runs them locally (a
memory/disk budget) or as Ray tasks, then writes the summary (``batch-summary.md``/``.json``) in
the output folder. Each model has its own workspace and manifest in ``<outdir>/<name>/``, so a
re-run skips what is up to date; a failed model does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.fsutil import write_json_atomic, write_text_atomic
from ggufkit.core.log import get_logger
from ggufkit.workspace.batch.execute import StepOutcome
from ggufkit.workspace.batch.graph import Step, build_graph, format_graph
from ggufkit.workspace.batch.plan import BatchPlan, load_plan

__all__ = [
    "BatchPlan",
    "BatchSummary",
    "Step",
    "StepOutcome",
    "build_graph",
    "format_graph",
    "load_plan",
    "run_batch",
]

log = get_logger("batch")
SUMMARY_NAME = "batch-summary"


@dataclass
class BatchSummary:
    plan: Path
    outdir: Path
    where: str  # "local" or the Ray address
    outcomes: list[StepOutcome] = field(default_factory=list)

    @property
    def failed_models(self) -> dict[str, str]:
        """Each failed model and the first error among its steps."""
        failed: dict[str, str] = {}
        for o in self.outcomes:
            if o.status == "failed" and o.model not in failed:
                failed[o.model] = f"{o.kind}: {o.error}"
        return failed

    @property
    def ok(self) -> bool:
        return not self.failed_models

    def counts(self, model: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            if o.model == model:
                counts[o.status] = counts.get(o.status, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        models = dict.fromkeys(o.model for o in self.outcomes)
        failed = self.failed_models
        return {
            "plan": str(self.plan),
            "outdir": str(self.outdir),
            "where": self.where,
            "ok": self.ok,
            "models": [
                {
                    "model": m,
                    "status": "failed" if m in failed else "ok",
                    "error": failed.get(m),
                    "steps": self.counts(m),
                    "manifest": str(self.outdir / m / "manifest.json"),
                }
                for m in models
            ],
            "steps": [o.to_json() for o in self.outcomes],
        }

    def markdown(self) -> str:
        data = self.to_json()
        lines = [
            f"# Batch: {self.plan.name} ({self.where})",
            "",
            "| model | status | built | up to date | other | error |",
            "| --- | --- | ---: | ---: | --- | --- |",
        ]
        for m in data["models"]:
            steps = dict(m["steps"])
            built, fresh = steps.pop("built", 0), steps.pop("up to date", 0)
            other = ", ".join(f"{n} {k}" for k, n in steps.items()) or "-"
            error = (m["error"] or "").replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {m['model']} | {m['status']} | {built} | {fresh} | {other} | {error} |"
            )
        lines += ["", "| step | status | seconds | node |", "| --- | --- | ---: | --- |"]
        for o in self.outcomes:
            lines.append(f"| {o.step} | {o.status} | {o.seconds:.1f} | {o.node} |")
        return "\n".join(lines) + "\n"

    def write(self) -> tuple[Path, Path]:
        md = write_text_atomic(self.outdir / f"{SUMMARY_NAME}.md", self.markdown())
        js = write_json_atomic(self.outdir / f"{SUMMARY_NAME}.json", self.to_json())
        return md, js


def run_batch(
    plan: BatchPlan,
    *,
    ray_address: str | None = None,
    portable: bool = False,
    max_parallel: int | None = None,
    memory_budget: int | None = None,
    on_outcome: Callable[[StepOutcome], None] | None = None,
) -> BatchSummary:
    """Run every step of ``plan`` (here, or on the Ray cluster at ``ray_address``) and write the
    summary; failed steps are in the summary, not raised."""
    steps = build_graph(plan)
    total, seen = len(steps), [0]

    def report(outcome: StepOutcome) -> None:
        seen[0] += 1
        extra = f": {outcome.error}" if outcome.error else ""
        log.info("[%d/%d] %s %s%s", seen[0], total, outcome.step, outcome.status, extra)
        if on_outcome is not None:
            on_outcome(outcome)

    if ray_address is not None:
        from ggufkit.workspace.batch.ray import run_ray

        outcomes = run_ray(plan, steps, ray_address, portable=portable, on_outcome=report)
    else:
        from ggufkit.workspace.batch.local import run_local

        outcomes = run_local(
            plan, steps, max_parallel=max_parallel, memory_budget=memory_budget, on_outcome=report
        )
    summary = BatchSummary(plan.path, plan.outdir, ray_address or "local", outcomes)
    summary.write()
    return summary
