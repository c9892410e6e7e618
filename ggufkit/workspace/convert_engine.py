"""The convert step's engine in a workspace: the one asked for, and, for ``auto``, the one that
ran, recorded with the step's options so that its fingerprint names the engine that made the
bytes (``auto`` converts natively or through upstream as the checkpoint allows)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ggufkit.core.log import get_logger
from ggufkit.workspace.step_results import jsonable

log = get_logger("workspace")

USED = "engine_used"  # the options' key of the engine ``auto`` ran


def chosen_engine(given: str | None, toml: str | None, record: Mapping[str, Any] | None) -> str:
    """``given`` (``convert --engine``), else ggufkit.toml's ``engine``, else the one an earlier
    explicit run recorded (so that the convert a ``quantize`` runs first does not redo it with
    another engine), else auto."""
    if given is not None and toml is not None and given != toml:
        log.info("--engine %s overrides ggufkit.toml's engine = %s for this run", given, toml)
    if given is not None or toml is not None:
        return str(given or toml)
    recorded = ((record or {}).get("options") or {}).get("engine")
    return recorded if recorded in ("native", "upstream") else "auto"


def engine_options(engine: str, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The engine part of the convert step's options: an explicit engine; for ``auto``, the engine
    it ran last time (the record's), which the run that rebuilds the file replaces."""
    if engine != "auto":
        return {"engine": engine}  # engines may differ in bytes; threads do not
    used = ((record or {}).get("options") or {}).get(USED)
    return {USED: used} if isinstance(used, str) else {}


def engine_ran(result: object) -> str | None:
    """The engine a conversion reports (``ConvertResult.engine``: native, upstream or legacy)."""
    engine = (jsonable(result) or {}).get("engine") if result is not None else None
    return engine if isinstance(engine, str) else None
