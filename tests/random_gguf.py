"""A random-weight LLaMA written straight to GGUF (f16 matrices), for evaluation tests and
benchmarks: no checkpoint, no converter, no tokenizer training.

The vocabulary is SentencePiece-shaped (specials, the 256 byte tokens, filler pieces that never
match), so text tokenizes to its bytes: one token a byte. ``scale`` is the standard deviation of
the matrices: larger values give larger activations, where flash attention's f16 accumulation
departs from the f32 path (``tests/test_eval_flash_attn.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def llama_shapes(
    *, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int
) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and numpy shapes (rows, columns) of a LLaMA."""
    kv = kv_heads * (hidden // heads)
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (hidden,),
            p + "attn_q.weight": (hidden, hidden),
            p + "attn_k.weight": (kv, hidden),
            p + "attn_v.weight": (kv, hidden),
            p + "attn_output.weight": (hidden, hidden),
            p + "ffn_norm.weight": (hidden,),
            p + "ffn_gate.weight": (intermediate, hidden),
            p + "ffn_up.weight": (intermediate, hidden),
            p + "ffn_down.weight": (hidden, intermediate),
        }
    return shapes | {"output_norm.weight": (hidden,), "output.weight": (vocab, hidden)}


def write_random_gguf(
    path: Path,
    *,
    hidden: int = 256,
    intermediate: int = 512,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 2,
    vocab: int = 512,
    scale: float = 0.02,
    seed: int = 0,
    tied_output: bool = False,
    embedding_scale: float | None = None,
) -> Path:
    """Write the model (one tensor in memory at a time) to ``path`` atomically; returns it.

    ``tied_output``: the output matrix is the embedding, so the model predicts its input token
    with a wide margin, and a q8_0 copy agrees with it on the top token almost everywhere (a
    random output matrix leaves near-ties that quantization flips on ~5 % of positions); give it
    an ``embedding_scale`` well above ``scale`` so the layers do not drown the input token."""
    import gguf

    shapes = llama_shapes(
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        vocab=vocab,
    )
    tmp = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"random-llama-{hidden}x{layers}")
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁t{i}" for i in range(vocab - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(vocab)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (vocab - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    for name, shape in shapes.items():
        dtype = np.dtype(np.float32 if len(shape) == 1 else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    embedding = None
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, dtype=np.float32))
        elif name == "output.weight" and tied_output:
            writer.write_tensor_data(embedding)
        else:
            data = rng.standard_normal(shape, dtype=np.float32)
            data *= embedding_scale if name == "token_embd.weight" and embedding_scale else scale
            writer.write_tensor_data(data.astype(np.float16))
            if name == "token_embd.weight":
                embedding = data.astype(np.float16)
    writer.close()
    os.replace(tmp, path)
    return path
