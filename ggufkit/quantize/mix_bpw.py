"""Bits per weight of each quantization *mix*, measured on the pinned build.

A type's block format says little about its file: Q3_K_S, Q3_K_M and Q3_K_L all store most
tensors in Q3_K's 3.44-bit blocks, and differ in which tensors llama.cpp keeps wider (attention
values, the feed-forward down projection, the output, the first and last layers). The honest
figure is what llama-quantize itself computes: its ``--dry-run`` on a model header of the shape
upstream's own table measures (Llama-3-8B: 32 layers, hidden 4096, feed-forward 14336, 8 key/value
heads, vocabulary 128256) reports "quant size = ... (N BPW)" over all tensors. The header is a
sparse file (no tensor data is read), measured once per binary and cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core import paths
from ggufkit.core.fsutil import read_keyed_json, write_keyed_json
from ggufkit.core.log import get_logger
from ggufkit.quantize.engines import BinaryEngine, QuantizeOptions
from ggufkit.quantize.types import COPY, TypeTable

log = get_logger("quantize")

CACHE_VERSION = 2


@dataclass(frozen=True)
class ReferenceShape:
    name: str = "Llama-3-8B"
    vocab: int = 128256
    hidden: int = 4096
    layers: int = 32
    ffn: int = 14336
    heads: int = 32
    kv_heads: int = 8
    context: int = 8192

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, numpy shape: rows, row length) of a LLaMA of this shape."""
        kv = self.hidden // self.heads * self.kv_heads
        found: list[tuple[str, tuple[int, ...]]] = [
            ("token_embd.weight", (self.vocab, self.hidden))
        ]
        for i in range(self.layers):
            found += [
                (f"blk.{i}.attn_norm.weight", (self.hidden,)),
                (f"blk.{i}.attn_q.weight", (self.hidden, self.hidden)),
                (f"blk.{i}.attn_k.weight", (kv, self.hidden)),
                (f"blk.{i}.attn_v.weight", (kv, self.hidden)),
                (f"blk.{i}.attn_output.weight", (self.hidden, self.hidden)),
                (f"blk.{i}.ffn_norm.weight", (self.hidden,)),
                (f"blk.{i}.ffn_gate.weight", (self.ffn, self.hidden)),
                (f"blk.{i}.ffn_up.weight", (self.ffn, self.hidden)),
                (f"blk.{i}.ffn_down.weight", (self.hidden, self.ffn)),
            ]
        found += [
            ("output_norm.weight", (self.hidden,)),
            ("output.weight", (self.vocab, self.hidden)),
        ]
        return found


REFERENCE = ReferenceShape()


def write_reference(path: Path, shape: ReferenceShape = REFERENCE) -> Path:
    """An f16 GGUF header of ``shape`` whose tensor data is a hole (a sparse file)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(shape.hidden // shape.heads)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    data = 0
    for name, dims in shape.tensors():
        kind = gguf.GGMLQuantizationType.F16 if len(dims) > 1 else gguf.GGMLQuantizationType.F32
        item = 2 if len(dims) > 1 else 4
        nbytes = item * int(np.prod(dims))
        dtype = np.float16 if item == 2 else np.float32
        writer.add_tensor_info(name, dims, np.dtype(dtype), nbytes, raw_dtype=kind)
        data += -(-nbytes // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.stat().st_size
    start = -(-header // writer.data_alignment) * writer.data_alignment
    os.truncate(path, start + data)
    return path


def measured_mix_bpw(engine: BinaryEngine, table: TypeTable) -> dict[str, float]:
    """Type name -> bits per weight of its mix on the reference shape (cached per binary)."""
    stat = engine.binary.stat()
    key = f"{CACHE_VERSION}:{REFERENCE}:{engine.binary.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = paths.cache_file("quantize-mix-bpw", key)
    cached = read_keyed_json(cache, key)
    if isinstance(cached, dict) and all(isinstance(v, float) for v in cached.values()):
        return cached
    from ggufkit.core.partials import owned_temp_dir

    found: dict[str, float] = {}
    log.info("measuring each type's bits per weight on a %s-shaped header", REFERENCE.name)
    with owned_temp_dir("ggufkit-mix-bpw-") as work:
        reference = write_reference(Path(work) / f"{REFERENCE.name}-f16.gguf")
        for quant_type in table.types:
            if quant_type.name == COPY or quant_type.alias_of or quant_type.name.endswith("_MOE"):
                continue  # (a MoE type on a dense header measures its fallback, not itself)
            plan = engine.dry_run(reference, quant_type, QuantizeOptions())
            if plan.bits_per_weight is not None:
                found[quant_type.name] = plan.bits_per_weight
    for quant_type in table.types:  # an alias measures as what it stands for
        if quant_type.alias_of and quant_type.alias_of in found:
            found[quant_type.name] = found[quant_type.alias_of]
    write_keyed_json(cache, key, found)
    return found
