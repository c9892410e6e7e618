"""The quantized blocks of the pre-GGUF files: their scales and quants decoded, by era.

q4_0/q4_1/q8_0 blocks carried float32 scales until GGJT v3 (f16 since), and q4 nibbles were
interleaved (element 2j low, 2j+1 high) until GGJT v2 (since: j low, j+16 high), as that era's
``ggml.c`` ``quantize_row_q4_0`` packed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ggufkit.convert.legacy.reader import Q4_0, Q4_1, Q8_0, block_size


@dataclass
class Blocks:
    """Decoded blocks: per-block scale ``d`` (and min ``m``) as float32, quants ``q`` per element."""

    d: np.ndarray  # (n_blocks,) float32
    q: np.ndarray  # (n_blocks, 32): uint8 nibbles 0..15, or int8 for q8_0
    m: np.ndarray | None = None


def _nibbles(packed: np.ndarray, interleaved: bool) -> np.ndarray:
    low, high = packed & 0x0F, packed >> 4
    if interleaved:  # byte j holds elements 2j (low) and 2j+1 (high)
        return np.stack([low, high], axis=-1).reshape(len(packed), 32)
    return np.concatenate([low, high], axis=-1)  # elements j (low) and j+16 (high)


def decode_scales(raw: np.ndarray, type_id: int, layout: str) -> list[np.ndarray]:
    """The float32 scales (d, and m for q4_1) of old q4_0/q4_1/q8_0 blocks, without the quants."""
    _, size = block_size(type_id, layout)
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, size)
    heads = 2 if type_id == Q4_1 else 1
    return [blocks[:, 4 * i : 4 * i + 4].copy().view("<f4").reshape(-1) for i in range(heads)]


def decode_blocks(raw: np.ndarray, type_id: int, layout: str) -> Blocks:
    """Split the raw bytes of q4_0/q4_1/q8_0 blocks of any era into scales and quants."""
    if layout == "v3":
        raise ValueError("v3 blocks are today's layout; copy them")
    _, size = block_size(type_id, layout)
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, size)
    d = blocks[:, 0:4].copy().view("<f4").reshape(-1)
    if type_id == Q8_0:
        return Blocks(d, blocks[:, 4:].view(np.int8))
    if type_id == Q4_0:
        return Blocks(d, _nibbles(blocks[:, 4:], layout == "v1"))
    if type_id == Q4_1:
        m = blocks[:, 4:8].copy().view("<f4").reshape(-1)
        return Blocks(d, _nibbles(blocks[:, 8:], layout == "v1"), m)
    raise ValueError(f"no decoder for type {type_id}")


def dequantize(blocks: Blocks, type_id: int) -> np.ndarray:
    """float32 values, flat, as the ggml of the file's era computed them."""
    q = blocks.q.astype(np.float32)
    if type_id == Q4_0:
        q -= 8
    values = q * blocks.d[:, None]
    if blocks.m is not None:
        values += blocks.m[:, None]
    return values.reshape(-1)
