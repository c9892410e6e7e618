"""Delta weights (Vicuna/FastChat, Chimera/LLMZoo): target = base + delta, in bounded memory.

- :func:`merge_delta` writes base + delta as a safetensors checkpoint;
- :func:`merge_lora` writes base + a PEFT LoRA adapter (``scale * B @ A``) the same way, and
  :func:`open_lora` gives it tensor by tensor (``convert(base, out, lora=adapter)``);
- :func:`make_delta` writes target - base (the inverse);
- :func:`open_merged` gives the merged model as a TensorSource, computed tensor by tensor, which
  ``ggufkit.convert.convert(delta, out, delta_base=base)`` streams straight into a GGUF file.
"""

from __future__ import annotations

from ggufkit.delta.arith import DTYPES, Dtype
from ggufkit.delta.lora_merge import merge_lora, open_lora
from ggufkit.delta.merge import DEFAULT_DTYPE, MergeResult, make_delta, merge_delta, open_merged
from ggufkit.delta.source import STYLES, CombinedSource, Style

__all__ = [
    "DEFAULT_DTYPE",
    "DTYPES",
    "STYLES",
    "CombinedSource",
    "Dtype",
    "MergeResult",
    "Style",
    "make_delta",
    "merge_delta",
    "merge_lora",
    "open_lora",
    "open_merged",
]
