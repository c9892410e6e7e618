"""What a conversion returns, and the names a caller chooses from (light: no gguf, no numpy).

``OUTTYPE_NAMES`` is the one list of output types: ``base.OUTTYPES`` maps it to gguf-py's
``GGMLQuantizationType`` members of the same names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

OUTTYPE_NAMES = ("f32", "f16", "bf16", "q8_0")
ENGINES = ("auto", "native", "upstream")
# The engine that wrote a file: a checkpoint's native or upstream one, or the legacy converter.
EngineUsed = Literal["native", "upstream", "legacy"]
# Messages name convert()'s parameters in backticks; ``ggufkit convert`` puts its options there.
EXISTS_HINT = "pass `force=True` to overwrite it, or choose another `output`"


@dataclass
class EngineResult:
    """What one engine (``native.convert_native``, ``upstream.convert_upstream``) wrote."""

    n_tensors: int
    n_bytes: int
    source_bytes: int
    gguf_arch: str  # llama.cpp's name, e.g. llama
    notes: list[str]


@dataclass
class ConvertResult:
    output: Path
    arch: str  # the Hugging Face architecture, e.g. LlamaForCausalLM
    gguf_arch: str  # llama.cpp's name, e.g. llama
    outtype: str
    n_tensors: int
    n_bytes: int
    source_bytes: int
    seconds: float
    engine: EngineUsed
    notes: list[str] = field(default_factory=list)  # vocab / pre-tokenizer remarks
    # Where ``seconds`` went: "prepare" (config, tensor plans, vocabulary, header), "data"
    # (tensor data converted and written), "finish" (hashes, final header); upstream engine:
    # "upstream" (its child's lifetime) and "prepare" (the rest: ggufkit's own)
    phases: dict[str, float] = field(default_factory=dict)
    mmproj: Path | None = None  # a vision-language model's projector, written beside ``output``

    @property
    def mb_per_s(self) -> float:
        return self.source_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["mmproj"] = str(self.mmproj) if self.mmproj is not None else None
        return data


def default_output_name(model_name: str, outtype: str) -> str:
    """``<model>-<OUTTYPE>.gguf``, the type upper-cased as llama.cpp names its files."""
    return f"{model_name}-{outtype.upper()}.gguf"
