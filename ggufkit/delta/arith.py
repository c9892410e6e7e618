"""The arithmetic of a delta, chunk by chunk, with the rounding of the tools it stands in for.

FastChat and LLMZoo load both models as fp16 (``tensor.to(torch.float16)``) and add in fp16.
Their commonest case, bf16 models merged in f16, has a numpy kernel of its own (``kernel``):
the same bits without importing torch. Otherwise, with torch installed, the same torch
operations run here on each chunk. Without it, numpy rounds
each input to the working dtype, adds in float32 and rounds the sum once more: float32 carries at
least 2p+2 bits for p = 11 (fp16) and p = 8 (bf16), so this double rounding gives the same bits
as the half-precision add. The work goes in chunks of ``CHUNK_ELEMENTS`` so that temporaries stay
small next to the tensor, and each chunk's input pages can be given back as soon as it is done.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any, Literal

import numpy as np

from ggufkit.delta.kernel import add_bf16_f16
from ggufkit.formats.safetensors import bf16_to_float32, float32_to_bf16

Dtype = Literal["f16", "bf16", "f32"]
DTYPES: tuple[Dtype, ...] = ("f16", "bf16", "f32")
DTYPE_CODES: dict[str, str] = {"f16": "F16", "bf16": "BF16", "f32": "F32"}
TORCH_NAMES: dict[str, str] = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}
FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per temporary

_OUT_NUMPY = {"f16": np.float16, "bf16": np.uint16, "f32": np.float32}


@cache
def torch_backend() -> ModuleType | None:
    """torch when installed (several times faster at fp16 casts than numpy), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def output_array(
    shape: tuple[int, ...], dtype: Dtype, buffer: np.ndarray | None = None
) -> np.ndarray:
    """An uninitialised array for a result in ``dtype`` (bf16 as uint16 bits), in ``buffer``
    (uint8) when it is large enough."""
    np_dtype = np.dtype(_OUT_NUMPY[dtype])
    n_bytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if buffer is not None and buffer.nbytes >= n_bytes:
        return buffer[:n_bytes].view(np_dtype).reshape(shape)
    return np.empty(shape, dtype=np_dtype)


def values_as(raw: np.ndarray, code: str, dtype: Dtype) -> np.ndarray:
    """float32 holding the inputs rounded to ``dtype``, like ``tensor.to(dtype)`` in torch."""
    # float64 goes through float32 first, as torch's float64 -> float16 cast does.
    values = bf16_to_float32(raw) if code == "BF16" else raw.astype(np.float32)
    if dtype == "f16" and code != "F16":
        values = values.astype(np.float16).astype(np.float32)
    elif dtype == "bf16" and code != "BF16":
        values = bf16_to_float32(float32_to_bf16(values))
    return values


def to_float32(result: np.ndarray, dtype: Dtype) -> np.ndarray:
    """The values of a result array (bf16 bits included) as float32, exactly."""
    return bf16_to_float32(result) if dtype == "bf16" else result.astype(np.float32, copy=False)


@dataclass
class RoundTrip:
    """For make-delta in f32: how many values base + delta cannot give back exactly."""

    inexact: int = 0
    max_error: float = 0.0
    tensors: list[str] = field(default_factory=list)


def _chunk_numpy(
    out: np.ndarray,
    other: np.ndarray,
    other_code: str,
    base: np.ndarray,
    base_code: str,
    dtype: Dtype,
    sub: bool,
) -> None:
    o = values_as(other, other_code, dtype)
    if base.size == o.size:
        b = values_as(base, base_code, dtype)
    else:  # the chunk reaches rows appended to the vocabulary: a zero base there
        b = np.zeros(o.size, dtype=np.float32)
        b[: base.size] = values_as(base, base_code, dtype)
    result = np.subtract(o, b) if sub else np.add(o, b)
    out[...] = float32_to_bf16(result) if dtype == "bf16" else result


def _as_torch(torch: Any, raw: np.ndarray, code: str, dtype: Dtype) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memory maps: only read here, never written
        if code == "BF16":
            tensor = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(raw)
    return tensor.to({"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[dtype])


def _chunk_torch(
    out: np.ndarray,
    other: np.ndarray,
    other_code: str,
    base: np.ndarray,
    base_code: str,
    dtype: Dtype,
    sub: bool,
) -> None:
    torch: Any = torch_backend()
    o = _as_torch(torch, other, other_code, dtype)
    if base.size == o.numel():
        b = _as_torch(torch, base, base_code, dtype)
    else:  # the chunk reaches rows appended to the vocabulary: a zero base there
        b = torch.zeros_like(o)
        b[: base.size] = _as_torch(torch, base, base_code, dtype)
    target = torch.from_numpy(out.view(np.int16) if dtype == "bf16" else out)
    if dtype == "bf16":
        target = target.view(torch.bfloat16)
    (torch.sub if sub else torch.add)(o, b, out=target)


def combine_into(
    out: np.ndarray,
    other: np.ndarray,
    other_code: str,
    base: np.ndarray,
    base_code: str,
    dtype: Dtype,
    *,
    subtract: bool,
    round_trip: RoundTrip | None = None,
    name: str = "",
    chunk_done: Callable[[int, int], None] | None = None,
) -> None:
    """``out = other + base`` (merge) or ``other - base`` (make), element by element in ``dtype``.

    All arrays are flattened. ``base`` may be shorter than ``other``: rows appended to the
    vocabulary come last in C order, and there the base counts as zeros (the zero rows LLMZoo and
    FastChat v0 give a new ``<pad>``), so an existing row is never touched. ``chunk_done(start,
    stop)`` is called with each element range once it is written.
    """
    flat_out = out.reshape(-1).view(np.uint16 if dtype == "bf16" else out.dtype)
    flat_other, flat_base = other.reshape(-1), base.reshape(-1)
    # FastChat's default (bf16 models added in f16) has a numpy kernel of its own: no torch.
    fast = dtype == "f16" and other_code == base_code == "BF16" and not subtract
    chunk: Callable[..., None] | None = None
    for start in range(0, flat_other.size, CHUNK_ELEMENTS):
        stop = min(start + CHUNK_ELEMENTS, flat_other.size)
        o_raw, b_raw = flat_other[start:stop], flat_base[start:stop]
        target = flat_out[start:stop]
        if not (
            fast and b_raw.size == o_raw.size and add_bf16_f16(target.view(np.uint16), o_raw, b_raw)
        ):
            chunk = chunk or (_chunk_torch if torch_backend() is not None else _chunk_numpy)
            chunk(target, o_raw, other_code, b_raw, base_code, dtype, subtract)
        if round_trip is not None and subtract:
            delta = flat_out[start:stop]
            inexact = _check_round_trip(round_trip, o_raw, other_code, b_raw, base_code, delta)
            if inexact and name not in round_trip.tensors[-1:]:
                round_trip.tensors.append(name)
        if chunk_done is not None:
            chunk_done(start, stop)


def _check_round_trip(
    stats: RoundTrip,
    target_raw: np.ndarray,
    target_code: str,
    base_raw: np.ndarray,
    base_code: str,
    delta: np.ndarray,
) -> int:
    """Count values where base + delta (float32) is not the target bit for bit."""
    target = values_as(target_raw, target_code, "f32")
    back = np.array(delta, dtype=np.float32)
    back[: base_raw.size] += values_as(base_raw, base_code, "f32")
    bad = (back != target) & ~np.isnan(target)
    count = int(np.count_nonzero(bad))
    if count:
        stats.inexact += count
        stats.max_error = max(stats.max_error, float(np.max(np.abs(back[bad] - target[bad]))))
    return count
