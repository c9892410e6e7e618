"""Hugging Face checkpoint -> GGUF: ``convert(model, output, outtype=..., engine=...)``.

The native engine streams tensors through a registered per-architecture converter
(``ggufkit/convert/arch/<arch>.py``); the upstream engine runs the pinned ``convert_hf_to_gguf.py``
for architectures ggufkit does not register; ``ggufkit.convert.legacy`` converts pre-GGUF
``.bin`` files. ``convert()`` itself is in ``run``; this module only re-exports.
"""

from __future__ import annotations

from typing import Any

from ggufkit.convert.result import (
    ENGINES,
    OUTTYPE_NAMES,
    ConvertResult,
    EngineUsed,
    default_output_name,
)
from ggufkit.convert.run import convert, is_legacy_file

# The native machinery (gguf, numpy, the converters) loads when a conversion uses it: the
# upstream engine's parent stays a thin wrapper around its child. These names are served lazily.
_LAZY = {
    "OUTTYPES": "ggufkit.convert.base",
    "ModelConverter": "ggufkit.convert.base",
    "TensorPlan": "ggufkit.convert.base",
    "register": "ggufkit.convert.base",
    "registered_architectures": "ggufkit.convert.registry",
    "open_source": "ggufkit.convert.native",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENGINES",
    "OUTTYPES",
    "OUTTYPE_NAMES",
    "ConvertResult",
    "EngineUsed",
    "ModelConverter",
    "TensorPlan",
    "convert",
    "default_output_name",
    "is_legacy_file",
    "register",
    "registered_architectures",
]
