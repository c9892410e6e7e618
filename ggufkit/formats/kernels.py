"""Conversion kernels between storage types, in numpy, bit for bit what the reference tools write.

Each kernel works through its input in pieces of ``PIECE`` elements with temporaries that are
allocated once per thread, so the passes stay in the CPU cache and nothing is allocated per block;
numpy releases the GIL in every pass, so callers run kernels on several threads at once. Each one
also reports whether its input held NaN or Inf, folded into work it does anyway, so the writer
needs no extra pass to warn about them.

- ``bf16_to_f16``: bf16 bits -> f16 bits, equal to numpy's float32 -> float16 cast (what upstream
  converters do): exponents that are f16 normals are rebiased with integer operations, the rest
  (subnormals, overflow, Inf, NaN) come from a 64 Ki table, 8 elements at a time.
- ``quantize_q8_0``: float32 rows -> Q8_0 blocks, equal to gguf-py's ``quants.quantize``.
"""

from __future__ import annotations

import threading

import numpy as np

PIECE = 1 << 17  # elements per pass: a few 256 KiB temporaries, within L2
Q8_0_BLOCK = 32
Q8_0_BYTES = 2 + Q8_0_BLOCK  # an f16 scale, then 32 int8 values

_U16 = np.uint16
_F16_REBIAS = _U16((112 << 10) & 0xFFFF)  # exponent 127 -> 15 bias, modulo 2^16
_F16_NORMAL_LOW = _U16(113 << 8)  # bf16 exponents 113..142 are f16 normals (shifted by 1)
_F16_NORMAL_SPAN = _U16(30 << 8)
# The largest float32 below 0.5: trunc(x + copysign(it, x)) rounds half away from zero exactly
# as gguf-py's np_roundf (checked against it for every float32 in [-128, 128]).
_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))

_LUT: np.ndarray | None = None
_scratch = threading.local()


def scratch(kind: str, n_bytes: int) -> np.ndarray:
    """A uint8 buffer of this thread's, at least ``n_bytes`` long, kept for the next call of the
    same ``kind``: a block pipeline then touches fresh memory once, not once per block (a fresh
    page is a fault and a page of zeros, measured at ~7 % of a fused merge-convert)."""
    buffers: dict[str, np.ndarray] = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(kind)
    if buffer is None or buffer.size < n_bytes:  # grown by doubling: few fresh allocations
        grown = n_bytes if buffer is None else max(n_bytes, 2 * buffer.size)
        buffer = buffers[kind] = np.empty(grown, np.uint8)
    return buffer[:n_bytes]


def bf16_f16_table() -> np.ndarray:
    """f16 bits for every bf16 bit pattern, by numpy's own float32 -> float16 cast."""
    global _LUT
    if _LUT is None:
        with np.errstate(over="ignore"):
            every = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
            _LUT = every.astype(np.float16).view(np.uint16)
    return _LUT


def scratch_array(kind: str, size: int, dtype: type) -> np.ndarray:
    """``size`` elements of ``dtype`` from this thread's ``scratch(kind, ...)`` buffer."""
    return scratch(kind, size * np.dtype(dtype).itemsize).view(dtype)


def _temporaries() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        scratch_array("kernels.shifted", PIECE, _U16),
        scratch_array("kernels.sign", PIECE, _U16),
        scratch_array("kernels.outside", PIECE, np.bool_),
    )


def bf16_to_f16(src: np.ndarray, dst: np.ndarray) -> bool:
    """Write the f16 bits of bf16 bits ``src`` into ``dst`` (both uint16, same size, contiguous);
    True when ``src`` holds NaN or Inf."""
    lut = bf16_f16_table()
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    shifted, sign, outside = _temporaries()
    nonfinite = False
    for start in range(0, flat_src.size, PIECE):
        s = flat_src[start : start + PIECE]
        d = flat_dst[start : start + PIECE]
        n = s.size
        sh, sg, out = shifted[:n], sign[:n], outside[:n]
        np.multiply(s, _U16(8), out=d)  # << 3 (numpy's shifts are slower): the sign falls off
        np.subtract(d, _F16_REBIAS, out=d)  # wraps modulo 2^16: right for f16 normals
        np.bitwise_and(s, _U16(0x8000), out=sg)
        np.bitwise_or(d, sg, out=d)
        np.add(s, s, out=sh)  # << 1: exponent and mantissa without the sign
        np.subtract(sh, _F16_NORMAL_LOW, out=sh)  # small exponents wrap round to large values
        np.greater_equal(sh, _F16_NORMAL_SPAN, out=out)
        if not out.any():
            continue
        if n % 8 == 0:  # look up whole groups of 8: a scan of n/8 words instead of n flags
            groups = np.flatnonzero(out.view(np.uint64))
            picked = s.reshape(-1, 8)[groups]
            d.reshape(-1, 8)[groups] = lut[picked]
        else:
            where = np.flatnonzero(out)
            picked = s[where]
            d[where] = lut[picked]
        if not nonfinite:
            nonfinite = bool(((picked & _U16(0x7F80)) == _U16(0x7F80)).any())
    return nonfinite


def _exponent_all_ones(bits: np.ndarray, limit: int) -> bool:
    flat = bits.reshape(-1).view(_U16)
    shifted, _, outside = _temporaries()
    for start in range(0, flat.size, PIECE):
        s = flat[start : start + PIECE]
        n = s.size
        np.add(s, s, out=shifted[:n])  # << 1: drop the sign
        np.greater_equal(shifted[:n], _U16(limit), out=outside[:n])
        if outside[:n].any():
            return True
    return False


def f16_nonfinite(bits: np.ndarray) -> bool:
    """True when f16 values (any 2-byte view) hold NaN or Inf: an all-ones exponent."""
    return _exponent_all_ones(bits, 0x7C00 << 1)


def bf16_nonfinite(bits: np.ndarray) -> bool:
    """True when bf16 bits hold NaN or Inf."""
    return _exponent_all_ones(bits, 0x7F80 << 1)


def f32_nonfinite(values: np.ndarray) -> bool:
    """True when float32 values hold NaN or Inf."""
    flat = values.reshape(-1)
    return any(
        not np.isfinite(flat[start : start + PIECE]).all() for start in range(0, flat.size, PIECE)
    )


def quantize_q8_0(rows: np.ndarray, out: np.ndarray) -> None:
    """float32 ``rows`` (..., k), k a multiple of 32, as Q8_0 into ``out`` (size / 32 * 34 bytes):
    per block of 32, scale d = max|x| / 127 stored as f16, then round(x / d) as int8."""
    blocks = rows.reshape(-1, Q8_0_BLOCK)
    packed = out.reshape(-1, Q8_0_BYTES)
    per_piece = max(1, PIECE // Q8_0_BLOCK)
    for start in range(0, blocks.shape[0], per_piece):
        x = blocks[start : start + per_piece]
        # max |x| on the bits: as integers, non-negative floats order as their values, and
        # numpy's integer max along a row is twice as fast as its float max
        magnitude = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
        amax = magnitude.max(axis=1).view(np.float32)[:, None]
        scale = amax / np.float32(127)
        # NaN and Inf go through as gguf-py takes them (the writer warns about them)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inverse = np.where(scale == 0, np.float32(0), np.float32(1) / scale)
            scaled = x * inverse
            scaled += np.copysign(_JUST_BELOW_HALF, scaled)
            target = packed[start : start + per_piece]
            target[:, :2] = scale.astype(np.float16).view(np.uint8)
            target[:, 2:] = scaled.astype(np.int8).view(np.uint8)  # the cast truncates toward 0
