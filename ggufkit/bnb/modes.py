"""The bitsandbytes modes ggufkit measures and the ``BitsAndBytesConfig`` each one loads with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Mode:
    name: str
    bits: int  # 4 or 8
    quant_type: str | None  # "nf4" / "fp4" for 4-bit; None for LLM.int8()
    double_quant: bool
    description: str


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("nf4", 4, "nf4", False, "4-bit NormalFloat"),
        Mode("nf4-dq", 4, "nf4", True, "4-bit NormalFloat, double quantization"),
        Mode("fp4", 4, "fp4", False, "4-bit float"),
        Mode("fp4-dq", 4, "fp4", True, "4-bit float, double quantization"),
        Mode("int8", 8, None, False, "LLM.int8() with outlier threshold"),
    )
}

# --compute-dtype names -> torch dtype names
COMPUTE_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
# what BitsAndBytesConfig accepts for bnb_4bit_quant_storage
QUANT_STORAGE = ("uint8", "int8", "float16", "bfloat16", "float32", "float64")


def parse_modes(text: str | None) -> list[Mode]:
    """``"nf4,int8"`` -> those modes in the given order; ``None``/``"all"`` -> all of them."""
    if text is None or text.strip().lower() == "all":
        return list(MODES.values())
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise UsageError(
            f"unknown bitsandbytes mode(s): {', '.join(unknown) or repr(text)}",
            hint=f"choose from {', '.join(MODES)} (comma-separated), or all",
        )
    return [MODES[n] for n in dict.fromkeys(names)]


def torch_dtype(name: str) -> torch.dtype:
    """``f32``/``f16``/``bf16`` (or a torch dtype name) as a torch dtype."""
    import torch

    key = COMPUTE_DTYPES.get(name, name)
    if key not in COMPUTE_DTYPES.values():
        raise UsageError(
            f"unknown compute dtype {name!r}", hint=f"choose from {', '.join(COMPUTE_DTYPES)}"
        )
    dtype: torch.dtype = getattr(torch, key)
    return dtype


def default_compute_dtype(device: str) -> str:
    """bf16 on a GPU that has it, else f16 on a GPU; f32 on CPU (bf16 there is slow without AVX512-BF16)."""
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "f16"
    return "f32"


@dataclass(frozen=True)
class QuantSettings:
    """The options every mode shares."""

    compute_dtype: str = "f32"
    quant_storage: str = "uint8"
    int8_threshold: float = 6.0
    fp32_cpu_offload: bool = False

    def __post_init__(self) -> None:
        if self.quant_storage not in QUANT_STORAGE:
            raise UsageError(
                f"unknown quant storage {self.quant_storage!r}",
                hint=f"choose from {', '.join(QUANT_STORAGE)}",
            )
        torch_dtype(self.compute_dtype)


def quantization_kwargs(mode: Mode, settings: QuantSettings, skip: list[str]) -> dict[str, Any]:
    """The ``BitsAndBytesConfig`` arguments of ``mode``; ``skip`` lists modules kept unquantized.

    transformers drops its default skips (lm_head, tied weights) once a list is given, so ``skip``
    must already hold them (see :func:`ggufkit.bnb.guards.default_skips`).
    """
    kwargs: dict[str, Any] = {
        "llm_int8_skip_modules": list(skip),
        "llm_int8_enable_fp32_cpu_offload": settings.fp32_cpu_offload,
    }
    if mode.bits == 8:
        kwargs.update(load_in_8bit=True, llm_int8_threshold=float(settings.int8_threshold))
    else:
        kwargs.update(
            load_in_4bit=True,
            bnb_4bit_quant_type=mode.quant_type,
            bnb_4bit_use_double_quant=mode.double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[settings.compute_dtype],
            bnb_4bit_quant_storage=settings.quant_storage,
        )
    return kwargs


def quantization_config(mode: Mode, settings: QuantSettings, skip: list[str]) -> Any:
    """A transformers ``BitsAndBytesConfig`` for ``mode``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**quantization_kwargs(mode, settings, skip))
