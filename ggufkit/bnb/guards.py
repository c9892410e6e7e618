"""Guards against the measured defects of bitsandbytes 0.50.x on CPU, and its log noise.

1. A 4-bit layer whose output size is not a multiple of 32 fails on its first forward with
   ``N must be divisible by block_n`` on AVX512-BF16 CPUs (the weight repacking of the fast
   path). :func:`guard_fast_path` turns the fast path off for such layers.
2. ``dequantize_4bit`` on CPU reads the wrong block scales for some row lengths that are not a
   multiple of the block size (relative weight error ~0.24 instead of ~0.09), and the generic
   4-bit matmul goes through it. :func:`plan_modules` probes the kernel for each layer shape
   against :func:`reference_dequantize_4bit` and keeps the affected layers unquantized.
3. ``save_pretrained`` after a CPU forward on the fast path writes corrupt nf4 weights without
   double quantization (the repacking is not undone correctly). ggufkit saves before running and
   compares :func:`weight_fingerprint` of the reloaded model with the in-memory one.

Every guard that acts returns a note; callers log it and put it in the results.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import ToolMissingError
from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    import torch

    from ggufkit.bnb.modes import Mode

log = get_logger("bnb.guards")

# logger name -> message prefixes dropped while bitsandbytes runs
NOISE: dict[str, tuple[str, ...]] = {
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
}
PROBE_TOLERANCE = 1e-3  # relative difference that marks the CPU dequantize kernel as wrong
FAST_PATH_BLOCK_N = 32  # used when bitsandbytes' own default cannot be read
NAMES_SHOWN = 4


class _Drop(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...], counts: Counter[str]) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.counts = counts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for prefix in self.prefixes:
            if message.startswith(prefix):
                self.counts[prefix] += 1
                return False
        return True


@contextmanager
def quiet_bitsandbytes() -> Iterator[Counter[str]]:
    """Drop bitsandbytes' per-call warnings (one per int8 matmul); yields the counts dropped."""
    counts: Counter[str] = Counter()
    installed = []
    for name, prefixes in NOISE.items():
        filt = _Drop(prefixes, counts)
        logging.getLogger(name).addFilter(filt)
        installed.append((name, filt))
    try:
        yield counts
    finally:
        for name, filt in installed:
            logging.getLogger(name).removeFilter(filt)


def import_bitsandbytes() -> Any:
    """Import bitsandbytes quietly, or say how to install it."""
    try:
        with quiet_bitsandbytes():
            import bitsandbytes
    except ImportError as exc:
        raise ToolMissingError(
            "bitsandbytes is not installed", hint="pip install 'ggufkit[bnb]'"
        ) from exc
    return bitsandbytes


def shorten(names: Iterable[str], limit: int = NAMES_SHOWN) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- which modules to quantize -----------------------------------------------------------------


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


def linear_layers(model: Any) -> list[LinearLayer]:
    """Every ``nn.Linear`` of a (meta-device) model, by module name."""
    import torch

    return [
        LinearLayer(name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]


def default_skips(model: Any) -> list[str]:
    """The modules transformers keeps unquantized by default (output embeddings, tied weights)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    return sorted(get_keys_to_not_convert(model))


def is_skipped(name: str, patterns: Iterable[str]) -> bool:
    """transformers' matching of ``llm_int8_skip_modules`` (prefix at a boundary, regex, suffix)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(name, list(patterns))


def reference_dequantize_4bit(data: torch.Tensor, state: Any) -> torch.Tensor:
    """A 4-bit weight as float32, computed with plain torch from the packed nibbles and scales."""
    import torch

    packed = data.detach().contiguous().view(torch.uint8).reshape(-1)
    n = prod(state.shape)
    codes = torch.empty(packed.numel() * 2, dtype=torch.long, device=packed.device)
    codes[0::2] = (packed >> 4).long()
    codes[1::2] = (packed & 0xF).long()
    values = state.code.to(packed.device, torch.float32)[codes[:n]]
    if state.nested:
        inner = state.state2
        scales = inner.code.to(packed.device, torch.float32)[state.absmax.long()]
        blocks = torch.arange(scales.numel(), device=packed.device) // inner.blocksize
        absmax = scales * inner.absmax.float()[blocks] + float(state.offset)
    else:
        absmax = state.absmax.float().reshape(-1)
    blocks = torch.arange(n, device=packed.device) // state.blocksize
    return (values * absmax[blocks]).reshape(tuple(state.shape))


def dequantize_error(
    rows: int, cols: int, *, quant_type: str, blocksize: int, storage: str = "uint8"
) -> float:
    """How far bitsandbytes' ``dequantize_4bit`` is from :func:`reference_dequantize_4bit` on CPU
    for a ``rows`` x ``cols`` weight (relative Frobenius difference; ~1e-7 when correct)."""
    import torch

    bnb = import_bitsandbytes()
    generator = torch.Generator().manual_seed(rows * 100_003 + cols)
    # Scales that vary from row to row, so that a block read with another block's scale shows.
    scale = torch.logspace(-2, 0, rows)[:, None]
    weight = torch.randn(rows, cols, generator=generator) * scale
    packed, state = bnb.functional.quantize_4bit(
        weight, blocksize=blocksize, quant_type=quant_type, quant_storage=getattr(torch, storage)
    )
    ours = reference_dequantize_4bit(packed, state)
    theirs = bnb.functional.dequantize_4bit(packed, state).float()
    return float((theirs - ours).norm() / ours.norm().clamp_min(1e-30))


def default_blocksize() -> int:
    """The block size bitsandbytes' Params4bit uses when none is given."""
    import torch

    bnb = import_bitsandbytes()
    probe = bnb.nn.Params4bit(torch.zeros(1), requires_grad=False)
    return int(probe.blocksize)


@dataclass
class ModulePlan:
    """Which modules a mode keeps unquantized, and why."""

    skip: list[str]  # everything passed to llm_int8_skip_modules
    guarded: list[str] = field(default_factory=list)  # added by the CPU guards
    quantized: int = 0  # Linear layers that will be quantized
    notes: list[str] = field(default_factory=list)


def plan_modules(
    layers: list[LinearLayer],
    mode: Mode,
    *,
    base_skip: list[str],
    device: str,
    quant_storage: str = "uint8",
    blocksize: int | None = None,
) -> ModulePlan:
    """Keep unquantized, besides ``base_skip``, the 4-bit layers whose shape the CPU kernel gets wrong."""
    candidates = [layer for layer in layers if not is_skipped(layer.name, base_skip)]
    plan = ModulePlan(skip=list(base_skip))
    if mode.bits == 4 and device == "cpu" and candidates:
        blocksize = blocksize or default_blocksize()
        verdicts: dict[tuple[int, int], float] = {}
        for layer in candidates:
            key = (min(layer.out_features, 2 * blocksize), layer.in_features)
            if key not in verdicts:
                verdicts[key] = dequantize_error(
                    *key,
                    quant_type=mode.quant_type or "nf4",
                    blocksize=blocksize,
                    storage=quant_storage,
                )
        bad = [
            layer
            for layer in candidates
            if verdicts[(min(layer.out_features, 2 * blocksize), layer.in_features)]
            > PROBE_TOLERANCE
        ]
        if bad:
            widths = sorted({layer.in_features for layer in bad})
            worst = max(verdicts[(min(b.out_features, 2 * blocksize), b.in_features)] for b in bad)
            plan.guarded = [layer.name for layer in bad]
            plan.notes.append(
                f"kept {len(bad)} layer(s) unquantized ({shorten(plan.guarded)}): bitsandbytes' "
                f"CPU dequantize_4bit is wrong for rows of {', '.join(map(str, widths))} values "
                f"(not a multiple of the block size {blocksize}); its output differs from the "
                f"reference by up to {worst:.2f} (relative)"
            )
            plan.skip += plan.guarded
            candidates = [layer for layer in candidates if layer not in bad]
    plan.quantized = len(candidates)
    return plan


# --- after loading -----------------------------------------------------------------------------


def fast_path_block_n() -> int:
    """The row block the AVX512-BF16 repacking needs (bitsandbytes' own default when readable)."""
    import_bitsandbytes()
    from bitsandbytes import functional

    convert = getattr(functional, "_convert_weight_packed_for_cpu", None)
    if convert is None:
        return FAST_PATH_BLOCK_N
    parameter = inspect.signature(convert).parameters.get("block_n")
    default = parameter.default if parameter is not None else None
    return default if isinstance(default, int) and default > 0 else FAST_PATH_BLOCK_N


def guard_fast_path(model: Any, label: str = "") -> list[str]:
    """Turn the AVX512-BF16 fast path off for CPU 4-bit layers it cannot repack; logs and returns
    notes on what was done (``label`` prefixes the log lines)."""
    bnb = import_bitsandbytes()
    block_n = fast_path_block_n()
    turned_off: list[str] = []
    kept = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        if module.weight.device.type != "cpu":
            continue
        blocksize = getattr(module.weight, "blocksize", None) or 1
        if module.out_features % block_n or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            turned_off.append(name)
        else:
            kept += 1
    notes = []
    prefix = f"{label}: " if label else ""
    if turned_off:
        notes.append(
            f"AVX512-BF16 fast path turned off for {len(turned_off)} layer(s) "
            f"({shorten(turned_off)}): their output size is not a multiple of {block_n} "
            "(bitsandbytes would fail with 'N must be divisible by block_n')"
        )
        log.warning("%s%s", prefix, notes[-1])
    if kept:
        notes.append(
            f"{kept} layer(s) use bitsandbytes' AVX512-BF16 fast path, which computes in bf16 "
            "whatever the compute dtype"
        )
        log.info("%s%s", prefix, notes[-1])
    return notes


def quantized_modules(model: Any) -> dict[str, Any]:
    """The bitsandbytes layers of a model (4-bit and 8-bit), by name."""
    bnb = import_bitsandbytes()
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def constants_bytes(model: Any) -> int:
    """Bytes of the quantization constants (block scales, code tables, int8 row scales) that
    ``get_memory_footprint()`` misses because they are neither parameters nor buffers."""
    import torch

    seen: dict[tuple[int, str], int] = {}

    def add(tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            key = (tensor.untyped_storage().data_ptr(), str(tensor.device))
            seen[key] = max(seen.get(key, 0), tensor.untyped_storage().nbytes())

    for module in quantized_modules(model).values():
        state = getattr(module.weight, "quant_state", None)
        if state is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(state, name, None))
            inner = getattr(state, "state2", None) if state.nested else None
            if inner is not None:
                add(inner.absmax)
                add(inner.code)
        else:
            add(getattr(module.weight, "SCB", None))
    return sum(seen.values())


def packed_modules(model: Any) -> list[str]:
    """4-bit layers already repacked by a CPU forward (saving them is what defect 3 corrupts)."""
    return [
        name
        for name, module in quantized_modules(model).items()
        if getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False)
    ]


def dequantized_weight(module: Any) -> torch.Tensor | None:
    """A bitsandbytes layer's weight as float32 (reference path); None when it cannot be read."""
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:
        if getattr(state, "packing_format_for_cpu", False):
            return None
        return reference_dequantize_4bit(weight.data, state)
    import torch

    if weight.dtype != torch.int8:
        return None
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = getattr(getattr(module, "state", None), "SCB", None)
    if scales is None:
        return None
    return weight.data.float() * scales.float()[:, None] / 127.0


def weight_fingerprint(model: Any) -> dict[str, tuple[float, float]]:
    """Per quantized layer, the sum and the sum of squares of its dequantized weight."""
    import torch

    prints = {}
    for name, module in quantized_modules(model).items():
        weight = dequantized_weight(module)
        if weight is not None:
            w = weight.to(torch.float64)
            prints[name] = (float(w.sum()), float((w * w).sum()))
    return prints


def fingerprint_mismatches(
    expected: dict[str, tuple[float, float]],
    actual: dict[str, tuple[float, float]],
    *,
    rtol: float = 1e-6,
) -> list[str]:
    """Layers missing from ``actual`` or whose fingerprint differs from ``expected``."""
    bad = []
    for name, (total, squares) in expected.items():
        other = actual.get(name)
        if other is None:
            bad.append(name)
            continue
        scale_sum = max(abs(total), squares**0.5, 1e-30)
        if abs(other[0] - total) > rtol * scale_sum or abs(other[1] - squares) > rtol * max(
            squares, 1e-30
        ):
            bad.append(name)
    return bad
