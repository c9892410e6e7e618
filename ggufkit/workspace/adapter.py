"""A LoRA adapter in a workspace or a batch plan: ``lora = "DIR"``, merged while converting.

Only a local directory (relative to the workspace or the plan): an adapter is small, and what
decides its effect (adapter_config.json and its weights) is hashed as the convert step's input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ggufkit.core.errors import WorkspaceError
from ggufkit.formats.origin import LORA_FILES
from ggufkit.workspace.manifest import sha256_files


def adapter_dir(root: Path, ref: str | None) -> Path | None:
    """The adapter directory ``ref`` names (relative to ``root``), or None when there is none."""
    if ref is None:
        return None
    path = Path(ref) if Path(ref).is_absolute() else root / ref
    if not (path / LORA_FILES[0]).is_file():
        raise WorkspaceError(
            f"lora = {ref!r}: {path} is not a PEFT adapter directory (no {LORA_FILES[0]})",
            hint="give the directory PEFT's save_pretrained wrote, relative to the workspace",
            path=path,
        )
    return path


def adapter_inputs(root: Path, ref: str | None) -> list[dict[str, Any]]:
    """The adapter as a convert step's input (none without one): its files' sha256s."""
    path = adapter_dir(root, ref)
    if path is None:
        return []
    files = [path / name for name in LORA_FILES if (path / name).is_file()]
    hashes = dict(zip([f.name for f in files], sha256_files(files), strict=True))
    return [{"role": "lora", "kind": "local", "path": str(path), "files": hashes}]
