"""A vision-language workspace: the projector (``mmproj-<name>-<TYPE>.gguf``) beside the model.

The convert step writes both files (``ggufkit.convert.vision``); the language model is the step's
output and is what ``quantize`` makes its types from, while the projector stays as converted
(f16 unless ggufkit.toml's ``mmproj_type`` asks for another type). The projector gets a record of
its own in the manifest (step ``mmproj``, the convert step's inputs and command), and the model's
record names it (``mmproj``), so that ``status`` shows it, ``publish`` uploads it beside the model
files, and the card shows the pair. When the projector is missing or changed, the convert step
runs again even though the model is up to date. ``ws`` is a
:class:`~ggufkit.workspace.steps.Workspace` (not imported: steps imports this module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import WorkspaceError
from ggufkit.core.fsutil import stays_inside
from ggufkit.core.log import get_logger
from ggufkit.workspace.manifest import Manifest, describe_output, editing, record_artefact

if TYPE_CHECKING:
    from ggufkit.workspace.card_pick import Artefact
    from ggufkit.workspace.step_results import StepResult, StepState

log = get_logger("workspace.vision")

STEP = "mmproj"
MMPROJ_KEY = "mmproj"  # in the model's record: the projector's key in the manifest
DEFAULT_TYPE = "f16"


def mmproj_options(config: Any) -> dict[str, str]:
    """What the convert step's fingerprint counts of the projector: its type, when asked for."""
    return {"mmproj_type": config.mmproj_type} if config.mmproj_type else {}


def mmproj_type(config: Any) -> str:
    return str(config.mmproj_type or DEFAULT_TYPE)


def recorded_mmproj(ws: Any, manifest: Manifest | None = None) -> Path | None:
    """The projector the model's record names (whether or not it is on disk), or None."""
    manifest = manifest or Manifest.load(ws.manifest_path)
    record = manifest.get(ws.built(ws.f16_path)) or {}
    key = record.get(MMPROJ_KEY)
    if not isinstance(key, str):
        return None
    if not stays_inside(key):  # a manifest edited or copied from elsewhere
        raise WorkspaceError(
            f"{manifest.path} names the projector {key!r}, outside the workspace",
            hint=f"delete {manifest.path.name} to convert again",
        )
    return manifest.path.parent / key


def mmproj_stale(ws: Any) -> bool:
    """Whether the projector converted with the model is missing, unrecorded or changed (the
    convert step must then run again)."""
    manifest = Manifest.load(ws.manifest_path)
    path = recorded_mmproj(ws, manifest)
    if path is None:
        return False
    why = _problem(path, manifest.get(path))
    if why is not None:
        log.info("convert: the projector %s is %s; converting again", path.name, why)
    return why is not None


def _problem(path: Path, record: dict[str, Any] | None) -> str | None:
    """Why the projector's file does not match its record, or None when it does."""
    if not path.is_file() or record is None:
        return "missing" if not path.is_file() else "not recorded"
    if describe_output(path)["sha256"] != record.get("sha256"):
        return "changed since it was made"
    return None


def record_mmproj(
    ws: Any, step: StepResult, inputs: Sequence[Mapping[str, Any]], command: Sequence[str]
) -> None:
    """After the convert step ran: record the projector it wrote (the step's inputs and command,
    its own type), and name it in the model's record; a text model: nothing to do."""
    if step.skipped:
        return
    manifest = Manifest.load(ws.manifest_path)
    result = (manifest.get(step.output) or {}).get("result") or {}
    if not isinstance(result.get("mmproj"), str):
        return
    path, model = Path(result["mmproj"]), manifest.key(step.output)
    options = {"outtype": mmproj_type(ws.config), "model": step.output.name}
    seconds = (result.get("phases") or {}).get("upstream_mmproj", 0.0)  # the converter's run
    record_artefact(ws.manifest_path, path, step=STEP, inputs=inputs, options=options,
                    command=command, seconds=seconds, extra={"model": model})  # fmt: skip
    with editing(ws.manifest_path) as manifest:
        manifest.artefacts[model][MMPROJ_KEY] = manifest.key(path)
        for key, other in list(manifest.artefacts.items()):  # one of another type, made before
            if (
                other.get("step") == STEP
                and other.get("model") == model
                and key != manifest.key(path)
            ):
                manifest.artefacts.pop(key)
                if stays_inside(key):  # never a file outside the workspace
                    (manifest.path.parent / key).unlink(missing_ok=True)
                log.info("convert: removed %s (the projector is now %s)", key, path.name)


def mmproj_state(ws: Any, inputs: Sequence[Mapping[str, Any]] | None,
                 manifest: Manifest) -> StepState | None:  # fmt: skip
    """``status``'s row for the projector, when the workspace has one."""
    path = recorded_mmproj(ws, manifest)
    if path is None:
        return None
    options = {"outtype": mmproj_type(ws.config), "model": ws.built(ws.f16_path).name}
    state = ws.state_of(STEP, path, inputs, options, manifest)
    state.label = "convert mmproj"
    return state


def published_mmproj(ws: Any) -> Artefact | None:
    """The projector as ``publish`` sends it beside the model files, checked against its record."""
    from ggufkit.workspace.card_pick import Artefact

    manifest = Manifest.load(ws.manifest_path)
    path = recorded_mmproj(ws, manifest)
    if path is None:
        return None
    record = manifest.get(path)
    why = _problem(path, record)
    if why is not None or record is None:
        raise WorkspaceError(
            f"the model's projector {path.name} is {why}: its record describes other bytes",
            hint="convert again: `ggufkit convert --force` (it writes the model and its mmproj)",
        )
    kind = (record.get("options") or {}).get("outtype") or DEFAULT_TYPE
    return Artefact(path, str(kind).upper(), record)
