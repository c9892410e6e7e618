"""bf16 + bf16 -> f16, FastChat's default merge, in numpy integer and float32 operations.

FastChat computes ``base.to(float16) + delta.to(float16)``: each input rounded to f16, then an
f16 add. numpy's float16 casts are scalar code, several times slower than torch's, and torch
costs a second and a half to import, so this common case has its own kernel, exact bit for bit:

- a bf16 value is a float32 with 16 zero low bits, so it widens by a shift;
- rounding it to f16 only moves values below f16's normal range (to a multiple of 2**-24), and
  ``x + 0.75`` (or ``x - 0.75``) does exactly that in float32 for every bf16 below 65536: the
  sum sits where float32's spacing is 2**-24, or is exact; adding the two shifted inputs gives
  float32(f16(a) + f16(b)), the 0.75s cancelling exactly. A zero sum comes out +0: the true sum
  is -0 only when both inputs are negative, so the sign bit is also set from ``a & b``;
- the f32 sum of two f16 values rounded once to f16 equals the f16 add (double rounding is
  harmless with 24 >= 2 * 11 + 2 bits). Scaled by 2**-112 (exact, f16 subnormals included, as
  the sum is a multiple of 2**-24), its float32 bits hold f16's exponent field and mantissa
  with 13 more bits, which round to nearest even by integer work.

Inputs of 16384 and beyond (so that no sum reaches f16's infinity), infinities and NaNs are left
to the caller (``add_bf16_f16`` returns False). The work goes in pieces of ``PIECE`` elements
whose temporaries (``formats.kernels.scratch``) stay in the L2 and L3 caches; each thread has
its own.
"""

from __future__ import annotations

import numpy as np

from ggufkit.formats.kernels import scratch_array

PIECE = 1 << 18
_U16, _U32 = np.uint16, np.uint32
_LIMIT = _U16(0x4680)  # bf16 bits of 16384: below it the trick is exact and no sum overflows
_ROUND = np.float32(0.75)
_TO_F16_BIAS = np.float32(2.0**-112)  # float32 exponent bias 127 -> f16's 15


def add_bf16_f16(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """``out = f16(f16(a) + f16(b))`` for flat uint16 arrays (bf16 bits in, f16 bits out).

    False, with ``out`` unspecified, where a piece holds an input the kernel leaves to the caller.
    """
    for start in range(0, a.size, PIECE):
        stop = min(start + PIECE, a.size)
        if not _piece(out[start:stop], a[start:stop], b[start:stop]):
            return False
    return True


def _in_range(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> bool:
    """Both inputs below 16384 in magnitude (no infinity, no NaN)."""
    np.bitwise_or(a, b, out=w)  # at least either magnitude: one pass settles the usual case
    w &= _U16(0x7FFF)
    if w.max() < _LIMIT:
        return True
    for x in (a, b):
        np.bitwise_and(x, _U16(0x7FFF), out=w)
        if w.max() >= _LIMIT:
            return False
    return True


def _piece(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    n = a.size
    fa, fb = scratch_array("delta.a", n, np.float32), scratch_array("delta.b", n, np.float32)
    u = scratch_array("delta.u", n, _U32)
    w, w2 = scratch_array("delta.w", n, _U16), scratch_array("delta.w2", n, _U16)
    if not _in_range(a, b, w):
        return False
    for x, f in ((a, fa), (b, fb)):
        bits = f.view(_U32)
        np.copyto(bits, x)
        bits <<= _U32(16)
    fa += _ROUND  # 0.75 + f16(a), exactly
    fb -= _ROUND  # f16(b) - 0.75, exactly
    np.add(fa, fb, out=fa)  # float32(f16(a) + f16(b)), below 32768 in magnitude
    fa *= _TO_F16_BIAS  # exact: f16's exponent field in float32's, subnormals included
    bits = fa.view(_U32)
    np.right_shift(bits, _U32(13), out=u)  # round to nearest even on the 13 dropped bits
    u &= _U32(1)
    u += bits
    u += _U32(0xFFF)
    u >>= _U32(13)
    np.copyto(out, u, casting="unsafe")  # the magnitude; the sign is now bit 18
    u >>= _U32(3)
    np.copyto(w, u, casting="unsafe")
    np.bitwise_and(a, b, out=w2)  # both negative: the sum is negative or -0
    w |= w2
    w &= _U16(0x8000)
    out |= w
    return True
