"""The same graph on an existing Ray cluster: one Ray task per step, with ``num_cpus`` and
``memory`` from the step's estimates and its dependencies passed as object references, so that
Ray, not ggufkit, decides where and when each step runs. A task lost with its worker or node is
retried by Ray (``max_retries``); the retry finds the dead writer's partial file and removes it.

Every node needs this ggufkit, the plan's inputs and its output folder at the same paths (a shared
file system), and a llama.cpp build: the one in its ``GGUFKIT_HOME`` when made for its CPU (a
shared home holds one per CPU key), else it builds one; ``portable`` builds the one that runs on
every CPU. Each node self-tests its build before its first task.
"""

from __future__ import annotations

from typing import Any

from ggufkit.core.errors import GGUFKitError, UsageError, WorkspaceError
from ggufkit.core.log import get_logger
from ggufkit.workspace.batch.execute import StepOutcome, execute
from ggufkit.workspace.batch.graph import Step
from ggufkit.workspace.batch.local import OnOutcome
from ggufkit.workspace.batch.plan import BatchPlan

log = get_logger("batch")

MAX_RETRIES = 3
MIN_MEMORY = 64 << 20
_node_ready = False  # per Ray worker process: the build was found and self-tested


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(
            "--ray needs Ray, which is not installed",
            hint='pip install "ggufkit[ray]" (ray==2.60.0)',
        ) from exc
    return ray


def prepare_node(portable: bool = False) -> None:
    """This node's llama.cpp build (made here if there is none for this CPU), self-tested."""
    global _node_ready
    if _node_ready:
        return
    from ggufkit.core.errors import ToolMissingError
    from ggufkit.llamacpp.build import current_build
    from ggufkit.llamacpp.layout import BuildOptions
    from ggufkit.selftest import build_and_test, ensure_selftest

    if portable:
        build_and_test(BuildOptions(native=False))
    else:
        try:
            ensure_selftest(current_build())
        except ToolMissingError:
            build_and_test()
    _node_ready = True


def ray_step(plan: BatchPlan, step: Step, portable: bool, *deps: StepOutcome) -> StepOutcome:
    """The Ray task: Ray resolves ``deps`` (the dependencies' outcomes) before it starts."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:12]
    try:
        prepare_node(portable)
    except GGUFKitError as exc:
        error = f"node {node}: {exc}"
        return StepOutcome(step.id, step.model, step.kind, "failed", error=error, node=node)
    outcome = execute(plan, step, deps)
    outcome.node = node
    return outcome


def run_ray(
    plan: BatchPlan,
    steps: list[Step],
    address: str,
    *,
    portable: bool = False,
    on_outcome: OnOutcome | None = None,
) -> list[StepOutcome]:
    """Submit every step to the cluster at ``address`` and wait for all of them."""
    ray = _import_ray()
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except Exception as exc:  # unreachable, stalled, or not a Ray cluster
        raise WorkspaceError(
            f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {exc}",
            hint="check the address (`ray status` on the head node); a head that does not answer "
            "fails after RAY_gcs_server_request_timeout_seconds (default 60) per try",
        ) from exc
    try:
        largest = max(
            (n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1
        )
        task = ray.remote(ray_step)
        refs: dict[str, Any] = {}
        for step in steps:
            refs[step.id] = task.options(
                num_cpus=min(step.cpus, largest),  # a larger request could never be placed
                memory=max(step.memory, MIN_MEMORY),
                max_retries=MAX_RETRIES,
                retry_exceptions=False,  # a failed step is an outcome; only lost tasks retry
                name=step.id,
            ).remote(plan, step, portable, *(refs[d] for d in step.deps))
        pending = {ref: step for step, ref in zip(steps, refs.values(), strict=True)}
        outcomes: dict[str, StepOutcome] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            step = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # retries used up, or the cluster went away
                outcome = StepOutcome(step.id, step.model, step.kind, "failed", error=str(exc))
            outcomes[step.id] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
        return [outcomes[s.id] for s in steps]
    finally:
        ray.shutdown()
