"""`ggufkit batch`: the plan file, the step graph and its estimates, and the local scheduler's
budget and failure handling (steps faked here; tests/test_batch_local.py runs real ones)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import WorkspaceError
from ggufkit.data import embedded_model
from ggufkit.workspace.batch import build_graph, load_plan, run_batch
from ggufkit.workspace.batch import local as local_mod
from ggufkit.workspace.batch.execute import StepOutcome, execute
from ggufkit.workspace.batch.graph import Step, f16_estimate


def write_plan(tmp_path: Path, body: str) -> Path:
    llama, delta = embedded_model("tiny-llama"), embedded_model("tiny-llama-milton-delta")
    path = tmp_path / "batch.toml"
    path.write_text(
        'outdir = "out"\ntypes = ["q4_0", "Q8_0", "q5_0"]\n'
        f'[[models]]\nsource = "{llama}"\n'
        f'[[models]]\nsource = "{delta}"\ndelta_base = "{llama}"\nname = "milton"\n' + body,
        encoding="utf-8",
    )
    return path


def test_plan_and_graph(tmp_path: Path) -> None:
    (tmp_path / "calib.txt").write_text("some text\n", encoding="utf-8")
    plan = load_plan(
        write_plan(
            tmp_path,
            '[imatrix]\ncorpus = "calib.txt"\n[eval]\nchunks = 2\n[publish]\nrepo = "me/{name}-GGUF"\n',
        )
    )
    assert [m.name for m in plan.models] == ["tiny-llama", "milton"]
    assert plan.types == ["q4_0", "q8_0", "q5_0"]
    assert plan.imatrix.corpus == tmp_path / "calib.txt" and plan.eval.chunks == 2
    assert plan.publish is not None and plan.publish.repo_for("milton") == "me/milton-GGUF"
    steps = {s.id: s for s in build_graph(plan)}
    assert len(steps) == 2 * 7  # convert, imatrix, 3 quantize, eval, publish; local: no download
    assert steps["milton:quantize:q8_0"].deps == ("milton:convert", "milton:imatrix")
    assert steps["milton:eval"].deps == (
        "milton:convert",
        "milton:quantize:q4_0",
        "milton:quantize:q8_0",
        "milton:quantize:q5_0",
    )
    assert steps["milton:publish"].deps == ("milton:eval",)
    # The estimates follow the checkpoint: tiny-llama's weights are f16 already.
    weights = sum(p.stat().st_size for p in embedded_model("tiny-llama").glob("*.safetensors"))
    model = plan.models[0]
    assert f16_estimate(model) == weights
    assert f16_estimate(model, "f32") == 2 * weights
    assert steps["tiny-llama:convert"].disk == weights
    assert steps["tiny-llama:quantize:q4_0"].disk < steps["tiny-llama:quantize:q8_0"].disk


def test_hub_models_get_a_download_step(tmp_path: Path) -> None:
    path = tmp_path / "batch.toml"
    path.write_text('types = ["q4_0"]\n[[models]]\nsource = "owner/model"\n', encoding="utf-8")
    steps = build_graph(load_plan(path))
    assert [s.id for s in steps] == ["model:download", "model:convert", "model:quantize:q4_0"]
    assert steps[1].deps == ("model:download",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('types = []\n[[models]]\nsource = "a/b"\n', "non-empty list"),
        ('types = ["q4_0"]\n', "no [[models]]"),
        ('types = ["q4_0"]\ncolour = 1\n[[models]]\nsource = "a/b"\n', "unknown setting"),
        ('types = ["q4_0"]\n[[models]]\nsource = "no/such/dir"\n', "not a Hub id"),
        ('types = ["q4_0"]\n[[models]]\nsource = "a/b"\nfoo = "x"\n', "unknown key 'foo'"),
        (
            'types = ["q4_0"]\n[[models]]\nsource = "a/b"\n[[models]]\nsource = "c/b"\n',
            "share a name",
        ),
        (
            'types = ["q4_0"]\n[[models]]\nsource = "a/b"\n[eval]\ncorpus = "nope.txt"\n',
            "does not exist",
        ),
        ('types = ["q4_0"]\n[[models]]\nsource = "a/b"\n[eval]\nctx = 0\n', "positive integer"),
        ('types = ["q4_0"]\n[[models]]\nsource = "a/b"\n[publish]\nrepo = "x"\n', "owner/name"),
        ('types = ["q4_0"\n', "not valid TOML"),
    ],
)
def test_bad_plans_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "batch.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(WorkspaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_plan(path)


def test_dry_run_prints_the_graph(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "")
    result = CliRunner().invoke(cli, ["batch", str(plan), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["step", "after", "memory", "disk", "time", "cpus"]
    assert any(line.startswith("milton:quantize:q5_0 ") for line in lines)
    assert lines[-1].startswith("8 steps;")
    assert not (tmp_path / "out").exists()  # nothing ran
    bad = CliRunner().invoke(cli, ["batch", str(plan), "--portable"])
    assert bad.exit_code == 2 and "--portable applies to --ray" in bad.output


def test_local_scheduler_keeps_to_the_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    running: list[str] = []
    peak: list[int] = [0]
    order: list[str] = []
    lock = threading.Lock()
    memory = {s.id: s.memory for s in build_graph(plan)}

    def fake(plan_: object, step: Step, deps: list[StepOutcome]) -> StepOutcome:
        with lock:
            assert all(not d.failed for d in deps)
            running.append(step.id)
            peak[0] = max(peak[0], sum(memory[s] for s in running))
            order.append(step.id)
        time.sleep(0.05)
        with lock:
            running.remove(step.id)
        return StepOutcome(step.id, step.model, step.kind, "built")

    monkeypatch.setattr(local_mod, "execute", fake)
    budget = 800 << 20  # room for one convert (~515 MiB) or three quantize steps (~258 MiB)
    summary = run_batch(plan, max_parallel=4, memory_budget=budget)
    assert summary.ok and len(summary.outcomes) == 8
    assert 0 < peak[0] <= budget
    for model in ("tiny-llama", "milton"):  # dependencies first
        assert order.index(f"{model}:convert") < order.index(f"{model}:quantize:q4_0")
    # Three quantize steps fit at once, so the budget allowed more than one step at a time.
    assert peak[0] > memory["tiny-llama:convert"]


def test_a_failed_model_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchModel"]}', encoding="utf-8")
    plan_path = write_plan(tmp_path, f'[[models]]\nsource = "{broken}"\n')
    plan = load_plan(plan_path)

    def fake(plan_: object, step: Step, deps: list[StepOutcome]) -> StepOutcome:
        if step.model == "broken" and step.kind == "convert":
            return StepOutcome(step.id, step.model, step.kind, "failed", error="boom")
        if any(d.failed for d in deps):
            return StepOutcome(step.id, step.model, step.kind, "skipped", error="after")
        return StepOutcome(step.id, step.model, step.kind, "built")

    monkeypatch.setattr(local_mod, "execute", fake)
    summary = run_batch(plan)
    assert summary.failed_models == {"broken": "convert: boom"}
    data = summary.to_json()
    statuses = {m["model"]: m["status"] for m in data["models"]}
    assert statuses == {"tiny-llama": "ok", "milton": "ok", "broken": "failed"}
    text = (plan.outdir / "batch-summary.md").read_text(encoding="utf-8")
    assert "| broken | failed | 0 | 0 | 1 failed, 3 skipped | convert: boom |" in text
    assert (plan.outdir / "batch-summary.json").is_file()


def test_execute_skips_after_a_failed_dependency_and_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.hub.upload import UploadResult
    from ggufkit.workspace import publish as publish_module

    plan = load_plan(write_plan(tmp_path, '[publish]\nrepo = "me/{name}-GGUF"\nprivate = true\n'))
    steps = {s.id: s for s in build_graph(plan)}
    failed = StepOutcome("milton:convert", "milton", "convert", "failed", error="x")
    skipped = execute(plan, steps["milton:quantize:q4_0"], [failed])
    assert skipped.status == "skipped" and skipped.error == "after milton:convert failed"
    calls: list[tuple[str, bool]] = []

    def fake_publish(ws: object, repo_id: str, *, private: bool = False) -> object:
        calls.append((repo_id, private))
        result = UploadResult(
            repo_id, "main", "abc", uploaded=["m.gguf"] if len(calls) == 1 else []
        )
        return publish_module.Publication(None, result)  # type: ignore[arg-type]

    monkeypatch.setattr(publish_module, "publish", fake_publish)
    assert execute(plan, steps["milton:publish"], []).status == "built"
    assert execute(plan, steps["milton:publish"], []).status == "up to date"  # nothing new
    assert calls == [("me/milton-GGUF", True)] * 2


def test_local_scheduler_runs_one_step_at_a_time_when_the_disk_is_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    running, peak, lock = [0], [0], threading.Lock()

    def fake(plan_: object, step: Step, deps: list[StepOutcome]) -> StepOutcome:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return StepOutcome(step.id, step.model, step.kind, "built")

    monkeypatch.setattr(local_mod, "execute", fake)
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(4 << 20))  # one quantized file's room
    summary = run_batch(plan, max_parallel=4, memory_budget=1 << 40)
    assert summary.ok and len(summary.outcomes) == 8
    assert peak[0] == 1  # alone a step always starts (its own check decides); never two
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(1 << 40))
    run_batch(plan, max_parallel=4, memory_budget=1 << 40)
    assert peak[0] > 1  # with room, the same graph runs steps side by side


def test_the_batch_hold_hook_is_the_tests_own() -> None:
    """The hook that holds a step for tests/test_batch_ray.py lives in tests/batch_hold (a
    sitecustomize its Ray cluster loads), nothing of it in the package; it wraps the quantize
    step only where its variable is set."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    package = [p for p in (root / "ggufkit").rglob("*.py") if "BATCH_HOLD" in p.read_text("utf-8")]
    assert package == []
    probe = "import ggufkit.workspace.batch.execute as e; print(e._quantize.__name__)"
    path = os.pathsep.join([str(root / "tests" / "batch_hold"), str(root)])
    names = []
    for hold in ("a:quantize:q8_0=/nonexistent/marker", None):
        env = {k: v for k, v in os.environ.items() if k != "GGUFKIT_BATCH_HOLD"}
        env.update({"PYTHONPATH": path, **({"GGUFKIT_BATCH_HOLD": hold} if hold else {})})
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        names.append(done.stdout.strip())
    assert names == ["held_quantize", "_quantize"]
