"""The conversion kernels against their oracles: numpy's own casts and gguf-py's quantizer."""

from __future__ import annotations

import threading

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import np_roundf

from ggufkit.formats import kernels

EVERY_BF16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)


def numpy_bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float16).view(np.uint16)


def bf16_nonfinite_oracle(bits: np.ndarray) -> bool:
    return not bool(np.isfinite((bits.astype(np.uint32) << 16).view(np.float32)).all())


@pytest.mark.parametrize("length", [65536, 65536 * 3 + 5, 7, kernels.PIECE + 8])
def test_bf16_to_f16_equals_numpy_for_every_bit_pattern(length: int) -> None:
    # Every pattern, shuffled and repeated to ``length``: whole groups of 8, a ragged tail, one
    # element, and pieces that end in the middle of the patterns.
    rng = np.random.default_rng(length)
    bits = np.resize(rng.permutation(EVERY_BF16), length)
    out = np.empty_like(bits)
    nonfinite = kernels.bf16_to_f16(bits, out)
    assert np.array_equal(out, numpy_bf16_to_f16(bits))
    assert nonfinite == bf16_nonfinite_oracle(bits)


def test_bf16_to_f16_finds_one_nonfinite_value_anywhere() -> None:
    rng = np.random.default_rng(1)
    finite = (rng.standard_normal(kernels.PIECE * 2 + 24, dtype=np.float32) * 0.02).view(np.uint32)
    bits = (finite >> 16).astype(np.uint16)
    out = np.empty_like(bits)
    assert kernels.bf16_to_f16(bits, out) is False
    for position in (0, 5, kernels.PIECE - 1, kernels.PIECE + 3, bits.size - 1):
        for special in (0x7F80, 0xFF80, 0x7FC1):  # +Inf, -Inf, a NaN
            planted = bits.copy()
            planted[position] = special
            assert kernels.bf16_to_f16(planted, out) is True
            assert np.array_equal(out, numpy_bf16_to_f16(planted))


def test_bf16_to_f16_on_threads_at_once() -> None:
    # Each thread has its own temporaries: concurrent conversions must not disturb each other.
    rng = np.random.default_rng(2)
    inputs = [rng.permutation(np.resize(EVERY_BF16, 3 * kernels.PIECE)) for _ in range(4)]
    outputs = [np.empty_like(a) for a in inputs]
    threads = [
        threading.Thread(target=kernels.bf16_to_f16, args=(a, o))
        for a, o in zip(inputs, outputs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, o in zip(inputs, outputs, strict=True):
        assert np.array_equal(o, numpy_bf16_to_f16(a))


def test_nonfinite_checks_match_isfinite() -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(kernels.PIECE + 100, dtype=np.float32)
    for special in (np.inf, -np.inf, np.nan, None):
        planted = values.copy()
        if special is not None:
            planted[kernels.PIECE + 50] = special
        want = special is not None
        assert kernels.f32_nonfinite(planted) is want
        assert kernels.f16_nonfinite(planted.astype(np.float16)) is want
        bf16 = (planted.view(np.uint32) >> 16).astype(np.uint16)
        assert kernels.bf16_nonfinite(bf16) is want
    # 65504 is f16's largest finite value; a value that overflows the cast is Inf, and is found.
    assert kernels.f16_nonfinite(np.array([65504.0], np.float16)) is False
    every_f16 = EVERY_BF16.view(np.float16)
    assert kernels.f16_nonfinite(every_f16[np.isfinite(every_f16)]) is False


def test_q8_0_rounding_is_np_roundf_at_every_tie_and_its_neighbours() -> None:
    # Every x.5 in [-127.5, 127.5], the floats either side, and a dense sample of all floats
    # below 128 (the full range was checked once: 1.1e9 values, no difference).
    ties = np.arange(-255, 256, dtype=np.float32) / 2
    near = np.concatenate(
        [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))]
    )
    sample = np.arange(0, 0x43000000, 997, dtype=np.uint32).view(np.float32)
    for values in (near, sample, -sample):
        shifted = values + np.copysign(kernels._JUST_BELOW_HALF, values)
        assert np.array_equal(np.trunc(shifted), np_roundf(values))


@pytest.mark.parametrize("rows,columns", [(1, 32), (37, 64), (3000, 96)])
def test_q8_0_equals_gguf_py(rows: int, columns: int) -> None:
    rng = np.random.default_rng(rows)
    values = rng.standard_normal((rows, columns), dtype=np.float32) * 0.02
    values[0, :32] = 0.0  # a block of zeros: scale 0
    if rows > 1:
        # Values that land exactly on a .5 after scaling: max 127 -> scale 1.
        values[1, :32] = np.arange(32, dtype=np.float32) - 15.5
        values[1, 0] = 127.0
    if rows > 2:
        values[2, 3], values[2, 31] = np.inf, -np.inf
        values[2, 33] = np.nan
    out = np.empty(rows * columns // 32 * 34, np.uint8)
    kernels.quantize_q8_0(values, out)
    with np.errstate(invalid="ignore", over="ignore"):
        want = gguf.quants.quantize(values, QT.Q8_0)
    assert np.array_equal(out.reshape(want.shape), want)
