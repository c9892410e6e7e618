"""What a workspace step returns and reports: a step's result, its state, the manifest's JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_REASONS = {
    "missing": "not built yet",
    "out of date": "inputs or options changed",
    "modified": "the output changed since it was made",
    "not recorded": "not made in this workspace",
}


@dataclass
class StepResult:
    step: str
    output: Path
    skipped: bool
    seconds: float = 0.0

    def describe(self) -> str:
        """The line the CLI prints: the output, and whether it was built or already up to date."""
        done = "up to date (skipped)" if self.skipped else f"built in {self.seconds:.1f} s"
        return f"{self.output}  {done}"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {**data, "output": str(self.output), "seconds": round(self.seconds, 3)}


@dataclass
class StepState:
    step: str
    output: Path
    state: str  # up to date, missing, out of date, modified, not recorded, unknown
    record: dict[str, Any] | None = None
    label: str = ""  # e.g. "quantize q4_0"


def jsonable(value: object) -> Any:
    """A step's return value as JSON for the manifest (``to_json()``, a dataclass, or plain)."""
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        value = to_json()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))
