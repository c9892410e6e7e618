"""The ``ggufkit.toml`` workspace: commands that need no arguments, and steps that run like make.

``ggufkit init SOURCE`` writes the file; afterwards ``ggufkit convert`` and ``ggufkit quantize``
read the model, names and types from it. A step whose inputs (by sha256) and options are those
recorded in ``out/manifest.json`` for an output that is still intact is skipped; ``--force``
redoes it. A file lock keeps two runs from building in the same workspace at once.
"""

from ggufkit.workspace.config import (
    CONFIG_NAME,
    WorkspaceConfig,
    default_name,
    init_workspace,
    parse_types,
)
from ggufkit.workspace.steps import StepResult, StepState, Workspace

__all__ = [
    "CONFIG_NAME",
    "StepResult",
    "StepState",
    "Workspace",
    "WorkspaceConfig",
    "default_name",
    "init_workspace",
    "parse_types",
]
