"""``ggufkit eval`` in a workspace: the models default to its built files, and the numbers are
recorded in its manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ggufkit.core.errors import WorkspaceError
from ggufkit.core.log import get_logger
from ggufkit.evaluate.results import EvalReport
from ggufkit.workspace.manifest import Manifest, now_iso, record_eval
from ggufkit.workspace.steps import Workspace

log = get_logger("workspace")


def resolve_models(models: Sequence[Path]) -> tuple[list[Path], Workspace | None]:
    """The models to evaluate, and the workspace (if any) whose manifest gets the results.

    Without models, the workspace's converted file and quantized files are evaluated.
    """
    if models:
        try:
            return list(models), Workspace.find()
        except WorkspaceError as exc:  # a broken ggufkit.toml must not stop an explicit eval
            log.warning("ignoring the workspace: %s", exc)
            return list(models), None
    workspace = Workspace.require()
    planned = [workspace.f16_path, *map(workspace.quantized_path, workspace.config.types)]
    candidates = [workspace.built(p) for p in planned]
    for key, record in Manifest.load(workspace.manifest_path).artefacts.items():
        if record.get("step") == "quantize" and key.endswith(".gguf"):
            candidates.append(workspace.manifest_path.parent / key)
    candidates = list(dict.fromkeys(p.absolute() for p in candidates))
    found = [p for p in candidates if p.is_file()]
    missing = [workspace.relative(p) for p in candidates if not p.is_file()]
    if not found:
        raise WorkspaceError(
            f"nothing to evaluate in {workspace.outdir}: {', '.join(missing)} not built yet",
            hint="run `ggufkit convert && ggufkit quantize` first, or give the .gguf files",
        )
    if missing:
        log.warning("not built yet, skipped: %s", ", ".join(missing))
    return found, workspace


def record_results(report: EvalReport, workspace: Workspace) -> list[Path]:
    """Add each model's numbers to the workspace manifest; models outside the workspace are
    left out. Returns the recorded paths."""
    recorded = []
    context = {
        "corpus": report.corpus,
        "corpus_sha256": report.corpus_sha256,
        "ctx": report.ctx,
        "chunks": report.chunks,
        "baseline": workspace.relative(Path(report.baseline)) if report.baseline else None,
        "llama_cpp_commit": report.llama_cpp_commit,
        "measured": now_iso(),
        "machine": machine(),
        "sequential": report.sequential,  # how the intervals were made (the card's plot says)
        "bench": report.bench or None,
    }
    for model in report.models:
        path = Path(model.path).absolute()
        if not path.is_relative_to(workspace.root.absolute()):
            continue
        values = {k: v for k, v in model.to_json().items() if k not in ("path", "name")}
        # Keep earlier numbers a narrower run did not measure (e.g. speed after --no-speed).
        results = {k: v for k, v in {**values, **context}.items() if v is not None}
        record_eval(workspace.manifest_path, path, results)
        recorded.append(path)
    return recorded


def machine() -> str:
    """The machine the numbers were measured on, as a model card names it."""
    import os
    import platform

    from ggufkit.llamacpp.cpu import detect_cpu

    return f"{detect_cpu().describe()}, {os.cpu_count()} cores, {platform.system()}"
