"""Legacy tensors -> GGUF tensors: names (tables, as data), and what happens to each type.

f32/f16 and blocks already in today's layout (GGJT v3 quants, GGJT v2 q5) are copied byte for
byte, as upstream's ``convert_llama_ggml_to_gguf.py`` does. Older q4_0/q4_1/q8_0 blocks carry
float32 scales: when every scale of a tensor is exactly a float16 the block is repacked into
today's type with the same values (and, for q4, today's nibble order); otherwise the tensor is
dequantized to f16, from which ``ggufkit quantize`` can requantize.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from ggufkit.convert.legacy.blocks import Blocks, decode_blocks, decode_scales, dequantize
from ggufkit.convert.legacy.reader import (
    F16,
    F32,
    Q4_0,
    Q4_1,
    Q8_0,
    TYPE_NAMES,
    LegacyFile,
    LegacyTensor,
    block_size,
)

# legacy name -> GGUF name; "{i}" is the block index
LLAMA_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
}
# bloomz.cpp's names; its query_key_value rows are already [all q; all k; all v], which is what
# llama.cpp's bloom graph splits, so no reordering is needed.
_BLOOM_PARTS = {
    "tok_embeddings": "token_embd",
    "norm": "token_embd_norm",
    "output_norm": "output_norm",
    "output": "output",
    "layers.{i}.attention_norm": "blk.{i}.attn_norm",
    "layers.{i}.attention.query_key_value": "blk.{i}.attn_qkv",
    "layers.{i}.attention.wo": "blk.{i}.attn_output",
    "layers.{i}.ffn_norm": "blk.{i}.ffn_norm",
    "layers.{i}.feed_forward.w1": "blk.{i}.ffn_up",
    "layers.{i}.feed_forward.w2": "blk.{i}.ffn_down",
}
BLOOM_NAMES = {
    f"{old}.{suffix}": f"{new}.{suffix}"
    for old, new in _BLOOM_PARTS.items()
    for suffix in ("weight", "bias")
}
NAME_TABLES = {"llama": LLAMA_NAMES, "bloom": BLOOM_NAMES}

_LAYER = re.compile(r"^layers\.(\d+)\.")
CHUNK_BLOCKS = 1 << 18  # blocks decoded at a time: bounded memory for any tensor
COPY_BYTES = 16 << 20


def gguf_name(family: str, name: str) -> str | None:
    match = _LAYER.match(name)
    key = name.replace(match.group(0), "layers.{i}.", 1) if match else name
    mapped = NAME_TABLES[family].get(key)
    if mapped is None:
        return None
    return mapped.replace("{i}", match.group(1)) if match else mapped


@dataclass
class TensorJob:
    """One output tensor: its type, how it was obtained ("copied", "repacked", "dequantized")."""

    name: str
    source: LegacyTensor
    ggml_type: QT
    action: str
    chunks: Callable[[], Iterator[np.ndarray]]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape


def plan_tensor(legacy: LegacyFile, tensor: LegacyTensor, name: str) -> TensorJob:
    kind = tensor.type_id
    if kind in (F32, F16) or legacy.layout == "v3" or kind not in (Q4_0, Q4_1, Q8_0):
        # today's layout already (GGJT v3, and v2's q5 blocks): the GGML type ids are unchanged
        return TensorJob(
            name, tensor, QT(kind), "copied", lambda: legacy.chunks(tensor, COPY_BYTES)
        )
    _, size = block_size(kind, legacy.layout)
    exact = all(
        _f16_exact(decode_scales(raw, kind, legacy.layout))
        for raw in legacy.chunks(tensor, CHUNK_BLOCKS * size)
    )

    def chunks() -> Iterator[np.ndarray]:
        for blocks in _scan(legacy, tensor):
            yield repack(blocks, kind) if exact else dequantize(blocks, kind).astype("<f2")

    if exact:
        return TensorJob(name, tensor, QT(kind), "repacked", chunks)
    return TensorJob(name, tensor, QT.F16, "dequantized", chunks)


def _scan(legacy: LegacyFile, tensor: LegacyTensor) -> Iterator[Blocks]:
    _, size = block_size(tensor.type_id, legacy.layout)
    for raw in legacy.chunks(tensor, CHUNK_BLOCKS * size):
        yield decode_blocks(raw, tensor.type_id, legacy.layout)


def _f16_exact(scales: list[np.ndarray]) -> bool:
    for s in scales:
        with np.errstate(over="ignore"):
            back = s.astype(np.float16).astype(np.float32)
        if not (np.isfinite(back).all() and np.array_equal(back, s)):
            return False
    return True


def repack(blocks: Blocks, kind: int) -> np.ndarray:
    """Blocks of exactly-f16 scales in today's q4_0/q4_1/q8_0 layout, as bytes (n_blocks, size).

    Today's q4 blocks hold elements j and j+16 in the low and high nibble of byte j.
    """
    n = len(blocks.d)
    heads = [blocks.d] if blocks.m is None else [blocks.d, blocks.m]
    parts: list[np.ndarray] = [h.astype("<f2").view(np.uint8).reshape(n, 2) for h in heads]
    if kind == Q8_0:
        parts.append(blocks.q.view(np.uint8))
    else:
        q = blocks.q.astype(np.uint8)
        parts.append(q[:, :16] | (q[:, 16:] << 4))
    return np.concatenate(parts, axis=1)


def describe_actions(jobs: list[TensorJob]) -> list[str]:
    """One note per (source type, action), e.g. "q4_0: 14 tensors dequantized to f16 (...)"."""
    notes = []
    groups: dict[tuple[str, str], int] = {}
    for job in jobs:
        key = (TYPE_NAMES.get(job.source.type_id, "?"), job.action)
        groups[key] = groups.get(key, 0) + 1
    for (kind, action), count in sorted(groups.items()):
        what = f"{kind}: {count} tensor{'s' if count > 1 else ''}"
        if action == "copied":
            notes.append(f"{what} kept as they are")
        elif action == "repacked":
            notes.append(
                f"{what} repacked into today's {kind} (every float32 scale is exact in f16, so "
                "the values are unchanged)"
            )
        else:
            notes.append(
                f"{what} dequantized to f16 (their float32 scales have no exact f16, so today's "
                f"{kind} cannot hold the same values); requantize with `ggufkit quantize`"
            )
    return notes
