"""Pre-GGUF ``.bin`` files -> GGUF: llama.cpp's GGML/GGMF/GGJT LLaMA, bloomz.cpp's BLOOM.

One package, its imports going one way, down: ``run`` (the conversion) uses ``tensors`` (names,
and what happens to each type) and ``vocab`` (the tokenizer); those use ``blocks`` (old quantized
blocks decoded) and ``reader`` (the file parsed and checked), which imports only the core.
``describe`` is what ``ggufkit inspect`` shows for such a file.
"""

from __future__ import annotations

from ggufkit.convert.legacy.describe import describe_legacy, describe_legacy_text
from ggufkit.convert.legacy.reader import is_legacy_file, read_legacy
from ggufkit.convert.legacy.run import LegacyResult, convert_legacy

__all__ = [
    "LegacyResult",
    "convert_legacy",
    "describe_legacy",
    "describe_legacy_text",
    "is_legacy_file",
    "read_legacy",
]
