"""bf16 + bf16 -> f16, FastChat's default merge, in numpy integer and float32 operations.

FastChat computes ``base.to(float16) + delta.to(float16)``: each input rounded to f16, then an
f16 add. numpy's float16 casts are scalar code, several times slower than torch's, and torch
costs a second and a half to import, so this common case has its own kernel, exact bit for bit:

- a bf16 value is a float32 with 16 zero low bits, so it widens by a shift;
- rounding it to f16 only moves values below f16's normal range (to a multiple of 2**-24), and
  ``(x + 0.75) - 0.75`` does exactly that in float32 for every bf16 below 65536 (the sum sits
  where float32's spacing is 2**-24 or the inputs' own, so it is exact or rounds like f16 does);
  it loses the sign of a zero, which only matters when both inputs are negative: then the true
  sum is negative or -0, so the sign bit is set from ``a & b``;
- the f32 sum of two f16 values rounded once to f16 equals the f16 add (double rounding is
  harmless with 24 >= 2 * 11 + 2 bits), and that rounding is integer work on the float32 bits:
  round-to-nearest-even on the 13 dropped bits and an exponent rebias for normal results, the
  exact multiple of 2**-24 for the (rare) subnormal ones, infinity past 65520.

Inputs of 65536 and beyond, infinities and NaNs are left to the caller (``add_piece`` returns
False): the rounding trick does not hold there. The work goes in pieces of ``PIECE`` elements
whose temporaries stay in the L2 cache; each thread has its own.
"""

from __future__ import annotations

import threading

import numpy as np

PIECE = 1 << 18
_U16, _U32 = np.uint16, np.uint32
_LIMIT = _U16(0x4780)  # bf16 bits of 65536: below it the rounding trick is exact
_ROUND = np.float32(0.75)
_F16_REBIAS = _U32(0xC8000FFF)  # exponent 127 -> 15 (mod 2**32) plus the rounding bias 0xFFF
_SMALLEST_NORMAL = np.float32(2.0**-14)
_OVERFLOW = np.float32(65520.0)  # f16 rounds this and beyond to infinity
_HALF_BITS = _U32(0x3F000000)  # float32 bits of 0.5: |s| + 0.5 holds |s| * 2**24 in its mantissa


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.a = np.empty(PIECE, np.float32)
        self.b = np.empty(PIECE, np.float32)
        self.u = np.empty(PIECE, _U32)
        self.w = np.empty(PIECE, _U16)
        self.m = np.empty(PIECE, np.bool_)


_scratch = _Scratch()


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
    """Both inputs below 65536 in magnitude (no infinity, no NaN)."""
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
    s = _scratch
    fa, fb, u, w, m = s.a[:n], s.b[:n], s.u[:n], s.w[:n], s.m[:n]
    if not _in_range(a, b, w):
        return False
    for x, f in ((a, fa), (b, fb)):
        bits = f.view(_U32)
        np.copyto(bits, x)
        bits <<= _U32(16)
    fa += _ROUND  # 0.75 + f16(a), exactly
    fb -= _ROUND  # f16(b) - 0.75, exactly
    np.add(fa, fb, out=fa)  # float32(f16(a) + f16(b))
    bits = fa.view(_U32)
    # Normal results: the low 15 bits of the shifted sum do not depend on the sign bit.
    np.right_shift(bits, _U32(13), out=u)
    u &= _U32(1)
    u += bits
    u += _F16_REBIAS
    u >>= _U32(13)
    np.copyto(out, u, casting="unsafe")
    np.abs(fa, out=fb)
    bits >>= _U32(16)
    np.copyto(w, bits, casting="unsafe")
    w &= _U16(0x8000)
    out |= w  # the sign; a zero sum's is fixed below
    np.less(fb, _SMALLEST_NORMAL, out=m)
    small = np.flatnonzero(m)
    if small.size:  # subnormal or zero: an exact multiple of 2**-24, and -0 if both were negative
        exact = ((fb[small] + np.float32(0.5)).view(_U32) - _HALF_BITS).astype(_U16)
        out[small] = exact | w[small] | (a[small] & b[small] & _U16(0x8000))
    if fb.max() >= _OVERFLOW:
        big = np.flatnonzero(fb >= _OVERFLOW)
        out[big] = w[big] | _U16(0x7C00)
    return True
