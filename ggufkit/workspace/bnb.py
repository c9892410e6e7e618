"""``ggufkit bnb`` in a workspace: the model defaults to its source, and the results are recorded.

The report is written to ``<outdir>/<name>-bnb.json`` and recorded in the manifest (step ``bnb``,
with the model as input and a per-mode summary as eval results); each ``--save`` directory inside
the workspace gets its own record too. ``bnb --image`` writes ``<outdir>/<name>-bnb-image.json``
(step ``bnb-image``, with the picture and the GGUF pair as inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import WorkspaceError
from ggufkit.core.fsutil import write_json_atomic
from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    from ggufkit.bnb.image_results import ImageReport
    from ggufkit.bnb.results import BnbReport
    from ggufkit.hub import ResolvedModel
    from ggufkit.workspace import Workspace

log = get_logger("workspace.bnb")

SUMMARY_KEYS = (
    "status",
    "reason",
    "load_s",
    "tokens_per_s",
    "footprint_bytes",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "peak_rss_bytes",
    "bpw",
    "ppl",
    "kld_mean",
    "top1_agreement",
    "mean_abs_dlogit",
    "weight_rel_error",
)


def workspace_model(model: str | None) -> tuple[str | Path, Workspace | None]:
    """The model to measure and the workspace to record in (only when the model is its source)."""
    from ggufkit.workspace import Workspace

    if model is None:
        workspace = Workspace.require()
        return workspace.source().path, workspace
    try:
        found = Workspace.find()
    except WorkspaceError as exc:  # a broken ggufkit.toml must not stop an explicit run
        log.warning("ignoring the workspace: %s", exc)
        return model, None
    if found is None:
        return model, None
    source = found.config.source
    local = found.root / source
    same = model == source or (
        local.is_dir() and Path(model).expanduser().absolute() == local.absolute()
    )
    return model, found if same else None


def summary(report: BnbReport) -> dict[str, Any]:
    """What the manifest keeps of a report: the setting and a few numbers per mode."""
    return {
        "bnb": {
            "device": report.device,
            "device_name": report.device_name,
            "compute_dtype": report.compute_dtype,
            "corpus_sha256": report.corpus_sha256,
            "ctx": report.ctx,
            "chunks": report.chunks,
            "modes": {
                r.name: {k: getattr(r, k) for k in SUMMARY_KEYS if getattr(r, k) is not None}
                for r in report.results
            },
        }
    }


def record_in_workspace(
    report: BnbReport,
    workspace: Workspace,
    model: ResolvedModel,
    *,
    options: Mapping[str, Any],
    command: Sequence[str],
    seconds: float,
) -> Path:
    """Write the report into the workspace and record it (and saved models) in the manifest."""
    from ggufkit.workspace.manifest import model_input, record_artefact, record_eval

    out = workspace.outdir / f"{workspace.config.name}-bnb.json"
    write_json_atomic(out, report.to_json())
    inputs = [model_input(model)]
    numbers = summary(report)
    record_artefact(
        workspace.manifest_path,
        out,
        step="bnb",
        inputs=inputs,
        options=options,
        command=command,
        seconds=seconds,
    )
    record_eval(workspace.manifest_path, out, numbers)
    for result in report.results:
        if result.saved_to and Path(result.saved_to).absolute().is_relative_to(
            workspace.root.absolute()
        ):
            record_artefact(
                workspace.manifest_path,
                Path(result.saved_to),
                step="bnb-save",
                inputs=inputs,
                options={**options, "mode": result.name},
                command=command,
                seconds=result.load_s or 0.0,
            )
            record_eval(
                workspace.manifest_path,
                Path(result.saved_to),
                {"bnb": numbers["bnb"]["modes"][result.name]},
            )
    return out


def record_image_in_workspace(
    report: ImageReport,
    workspace: Workspace,
    model: ResolvedModel,
    *,
    command: Sequence[str],
    seconds: float,
) -> Path:
    """``bnb --image``: the report beside the workspace's files, recorded with its inputs (the
    checkpoint, the picture and the GGUF pair it asked)."""
    from ggufkit.workspace.manifest import file_input, model_input, record_artefact

    out = workspace.outdir / f"{workspace.config.name}-bnb-image.json"
    write_json_atomic(out, report.to_json())
    inputs = [model_input(model), file_input(Path(report.image), role="picture")]
    for row in report.rows:
        # the GGUF pair's files; the other rows load the checkpoint (no files)
        if row.kind != "llama.cpp" or not row.files:
            continue
        inputs += [
            file_input(Path(f), role=role)
            for f, role in zip(row.files, ("model", "mmproj"), strict=True)
        ]
    options = {"question": report.question, "runs": report.runs, "seed": report.seed,
               "max_new_tokens": report.max_new_tokens, "quantization": report.quantization}  # fmt: skip
    record_artefact(workspace.manifest_path, out, step="bnb-image", inputs=inputs,
                    options=options, command=command, seconds=seconds)  # fmt: skip
    return out
