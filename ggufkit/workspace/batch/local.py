"""The local scheduler: the plan's graph on this machine, as many steps at once as the memory and
disk budget allows (each step's estimate from ``graph``), never more than ``max_parallel``."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ggufkit.core.fsutil import available_memory, free_bytes
from ggufkit.core.log import get_logger
from ggufkit.workspace.batch.execute import StepOutcome, execute
from ggufkit.workspace.batch.graph import Step
from ggufkit.workspace.batch.plan import BatchPlan

log = get_logger("batch")

OnOutcome = Callable[[StepOutcome], None]


def run_local(
    plan: BatchPlan,
    steps: list[Step],
    *,
    max_parallel: int | None = None,
    memory_budget: int | None = None,
    on_outcome: OnOutcome | None = None,
) -> list[StepOutcome]:
    """Run ``steps`` here; a step starts when its dependencies are done and its estimated memory
    and disk fit beside the running ones (alone, it always starts: its own checks decide)."""
    plan.outdir.mkdir(parents=True, exist_ok=True)
    parallel = max_parallel or max(1, os.cpu_count() or 1)
    memory = memory_budget if memory_budget is not None else int(available_memory() * 0.8)
    disk = free_bytes(plan.outdir)
    outcomes: dict[str, StepOutcome] = {}
    waiting = list(steps)
    running: dict[Future[StepOutcome], Step] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="batch") as pool:
        while waiting or running:
            used_memory = sum(s.memory for s in running.values())
            used_disk = sum(s.disk for s in running.values())
            for step in list(waiting):
                if len(running) >= parallel:
                    break
                if not all(d in outcomes for d in step.deps):
                    continue
                fits = used_memory + step.memory <= memory and used_disk + step.disk <= disk
                if running and not fits:
                    continue
                deps = [outcomes[d] for d in step.deps]
                waiting.remove(step)
                running[pool.submit(execute, plan, step, deps)] = step
                used_memory += step.memory
                used_disk += step.disk
            if not running:  # nothing can start: a dependency is not in the graph
                for step in waiting:
                    outcomes[step.id] = StepOutcome(step.id, step.model, step.kind, "skipped")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                outcome = future.result()
                outcomes[step.id] = outcome
                if outcome.status == "built":
                    disk = free_bytes(plan.outdir)  # what it wrote is now on the disk
                if on_outcome is not None:
                    on_outcome(outcome)
    return [outcomes[s.id] for s in steps]
