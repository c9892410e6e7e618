"""ggufkit: Hugging Face checkpoints to llama.cpp GGUF files, and proof that they are right."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Library entry points whose names are no subpackage, imported lazily so that `import ggufkit`
# stays light. `convert` and `quantize` are packages: `from ggufkit.convert import convert`,
# `from ggufkit.quantize import quantize`.
_EXPORTS = {
    "merge_delta": "ggufkit.delta:merge_delta",
    "make_delta": "ggufkit.delta:make_delta",
    "build": "ggufkit.llamacpp.build:build",
    "download": "ggufkit.hub:download",
}


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'ggufkit' has no attribute {name!r}")
    import importlib

    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
