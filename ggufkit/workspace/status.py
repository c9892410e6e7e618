"""``ggufkit status``: each step's output and whether it is up to date."""

from __future__ import annotations

from typing import Any

from ggufkit.workspace.manifest import Manifest, file_input
from ggufkit.workspace.step_results import StepState


def step_states(ws: Any) -> list[StepState]:
    """Each step of the workspace ``ws`` (a :class:`~ggufkit.workspace.steps.Workspace`), and
    its state; downloads and builds nothing."""
    manifest = Manifest.load(ws.manifest_path)
    model = ws.cached(ws.config.source, ws.config.revision)
    base = ws.cached(ws.config.delta_base)
    known = model is not None and (base is not None or ws.config.delta_base is None)
    inputs = ws.convert_inputs(model, base) if known and model is not None else None
    split_args = ws.split()[1]
    split: dict[str, Any] = {"split": split_args} if split_args else {}
    f16 = ws.built(ws.f16_path)
    options = ws.convert_options(ws.convert_engine(None, manifest), manifest)
    convert = ws.state_of("convert", f16, inputs, options, manifest)
    convert.label = "convert"
    states = [convert]
    from ggufkit.workspace.vision_step import mmproj_state

    if (projector := mmproj_state(ws, inputs, manifest)) is not None:  # a vision-language model
        states.append(projector)
    f16_stale = convert.state in ("missing", "out of date", "modified")
    f16_input = [file_input(f16)] if f16.is_file() else None
    if ws.config.imatrix is not None and f16_input is not None:  # [imatrix]: an input too
        from ggufkit.workspace.imatrix_step import imatrix_path

        matrix = imatrix_path(ws)
        f16_input = [*f16_input, file_input(matrix, role="imatrix")] if matrix.is_file() else None
    recorded = [r.get("options", {}).get("type") for r in manifest.artefacts.values()]
    extra = [t for t in recorded if isinstance(t, str) and t not in ws.config.types]
    for qtype in dict.fromkeys([*ws.config.types, *extra]):
        output = ws.built(ws.quantized_path(qtype))
        state = ws.state_of("quantize", output, f16_input, {"type": qtype, **split}, manifest)
        state.label = f"quantize {qtype}"
        if state.state == "up to date" and f16_stale:
            state.state = "out of date"  # the f16 it was made from is rebuilt first
        states.append(state)
    return states
