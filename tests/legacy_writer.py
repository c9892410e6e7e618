"""Test writer of pre-GGUF files, following the published formats (not ggufkit's reader).

- llama.cpp 2023: magic "ggml" (no version), "ggmf" v1 or "ggjt" v1..3; seven int32 hparams;
  vocabulary entries (len, bytes) plus a float32 score from GGMF on; tensors as n_dims, name
  length, type, dims (ggml order: reversed numpy shape), name, data (GGJT: padded to 32 bytes).
  The vocabulary is what convert-pth-to-ggml.py wrote from sentencepiece: " \u2047 " for unknown,
  nothing for control tokens, the raw byte for byte tokens, else the piece with U+2581 as space.
- bloomz.cpp (convert-hf-to-ggml.py): magic "ggml", hparams vocab_size, hidden_size,
  multiple_of=1, n_head, n_layer, head_dim, ftype; vocabulary ``tokenizer.decode([i])`` for every
  row; the model's state_dict in order, query_key_value rows regrouped per head with
  ``reshape(n_head, 3, -1)`` into [q; k; v], 1-D tensors in f32, 2-D in f16 for ftype 1.
- Quantized blocks of that era's ggml.c ``quantize_row_q4_0`` (the reference one): d = max / -8
  (max: the signed value of largest magnitude), q = min(15, round(x / d) + 8), C's roundf (half
  away from zero), elements 2j and 2j+1 in the low and high nibble of byte j, a float32 d first.
  GGJT v2 packs elements j and j+16 instead; v3 blocks are today's (gguf.quants).
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}


def _roundf(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_q4_0_old(x: np.ndarray, *, split_nibbles: bool = False) -> tuple[bytes, np.ndarray]:
    """Blocks of float32 d + 16 nibble bytes; returns the bytes and the values they stand for."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    idx = np.abs(blocks).argmax(axis=1)
    signed_max = blocks[np.arange(len(blocks)), idx]
    d = (signed_max / np.float32(-8)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, _roundf(blocks * inv[:, None]) + 8).astype(np.uint8)
    # GGJT v2 and later: elements j and j+16; before: elements 2j and 2j+1
    packed = q[:, :16] | (q[:, 16:] << 4) if split_nibbles else q[:, 0::2] | (q[:, 1::2] << 4)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 4), packed], axis=1)
    values = (q.astype(np.float32) - 8) * d[:, None]
    return raw.tobytes(), values.reshape(x.shape)


def quantize_q4_1_old(x: np.ndarray, *, split_nibbles: bool = False) -> tuple[bytes, np.ndarray]:
    """Blocks of float32 d = (max - min) / 15, float32 m = min, 16 nibble bytes."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, _roundf((blocks - lo[:, None]) * inv[:, None])).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4) if split_nibbles else q[:, 0::2] | (q[:, 1::2] << 4)
    heads = [d.view(np.uint8).reshape(-1, 4), lo.view(np.uint8).reshape(-1, 4)]
    raw = np.concatenate([*heads, packed], axis=1)
    values = q.astype(np.float32) * d[:, None] + lo[:, None]
    return raw.tobytes(), values.reshape(x.shape)


def quantize_q8_0_old(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Blocks of float32 d = amax / 127 + 32 int8 (GGJT v1/v2)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = _roundf(blocks * inv[:, None]).astype(np.int8)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 4), q.view(np.uint8)], axis=1)
    return raw.tobytes(), (q.astype(np.float32) * d[:, None]).reshape(x.shape)


def encode(array: np.ndarray, kind: str, layout: str) -> tuple[int, bytes, np.ndarray]:
    """(type id, bytes, the float32 values stored) of a numpy array as ``kind`` in ``layout``."""
    if kind == "f32":
        a = array.astype("<f4")
        return TYPE[kind], a.tobytes(), a.astype(np.float32)
    if kind == "f16":
        a = array.astype("<f2")
        return TYPE[kind], a.tobytes(), a.astype(np.float32)
    if layout == "v3" or kind in ("q5_0", "q5_1"):  # v2's q5 blocks are today's
        qtype = gguf.GGMLQuantizationType[kind.upper()]
        raw = gguf.quants.quantize(array.astype(np.float32), qtype)
        return TYPE[kind], raw.tobytes(), gguf.quants.dequantize(raw, qtype).reshape(array.shape)
    if kind == "q4_0":
        raw, values = quantize_q4_0_old(array, split_nibbles=layout == "v2")
        return TYPE[kind], raw, values
    if kind == "q4_1":
        raw, values = quantize_q4_1_old(array, split_nibbles=layout == "v2")
        return TYPE[kind], raw, values
    if kind == "q8_0":
        raw, values = quantize_q8_0_old(array)
        return TYPE[kind], raw, values
    raise ValueError(kind)


def write_file(
    path: Path,
    *,
    container: str,
    version: int,
    hparams: list[int],
    vocab: list[tuple[bytes, float]],
    tensors: list[tuple[str, int, tuple[int, ...], bytes]],
) -> Path:
    """``tensors``: (name, type id, numpy shape, data)."""
    out = bytearray(struct.pack("<I", MAGIC[container]))
    if container != "ggml":
        out += struct.pack("<I", version)
    out += struct.pack("<7i", *hparams)
    for text, score in vocab:
        out += struct.pack("<i", len(text)) + text
        if container != "ggml":
            out += struct.pack("<f", score)
    for name, type_id, shape, data in tensors:
        encoded = name.encode()
        out += struct.pack("<3i", len(shape), len(encoded), type_id)
        out += struct.pack(f"<{len(shape)}i", *reversed(shape))
        out += encoded
        if container == "ggjt":
            out += b"\0" * (-len(out) % 32)
        out += data
    path.write_bytes(bytes(out))
    return path


# --- LLaMA, from a GGUF written by the native converter (already in llama.cpp's row order) -----

_LLAMA_FROM_GGUF = {
    "token_embd": "tok_embeddings",
    "output_norm": "norm",
    "output": "output",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "attn_norm": "attention_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "ffn_norm": "ffn_norm",
}


def llama_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"layers.{parts[1]}.{_LLAMA_FROM_GGUF[parts[2]]}.{parts[3]}"
    return f"{_LLAMA_FROM_GGUF[parts[0]]}.{parts[1]}"


def spm_vocab(model_file: Path) -> list[tuple[bytes, float]]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_file))
    vocab = []
    for i in range(sp.vocab_size()):
        if sp.IsUnknown(i):
            text = " \u2047 ".encode()
        elif sp.IsControl(i):
            text = b""
        elif sp.IsByte(i):
            text = bytes([int(sp.IdToPiece(i)[3:-1], 16)])
        else:
            text = sp.IdToPiece(i).replace("\u2581", " ").encode()
        vocab.append((text, sp.GetScore(i)))
    return vocab


def write_llama(
    path: Path,
    f32_gguf: Path,
    model_dir: Path,
    *,
    container: str,
    version: int,
    kind: str,
    from_f16: bool = False,
) -> tuple[Path, dict[str, np.ndarray]]:
    """A LLaMA legacy file of ``kind`` (f16, q4_0, q8_0) from an f32 GGUF of the same model.

    ``from_f16``: quantize f16-rounded weights, as ``quantize`` did reading an f16 file (q4_0's
    d = max / -8 then is exactly an f16). Returns the file and the float32 values it stores, by
    legacy name.
    """
    reader = gguf.GGUFReader(f32_gguf)
    arrays = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    layout = "v3" if container == "ggjt" and version == 3 else "v2" if version == 2 else "v1"
    n_vocab, n_embd = arrays["token_embd.weight"].shape
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_layer = int(reader.fields["llama.block_count"].contents())
    ftype = FTYPE[kind]
    hparams = [n_vocab, n_embd, 256, n_head, n_layer, n_embd // n_head, ftype]
    tensors, stored = [], {}
    for name, array in arrays.items():
        legacy = llama_name(name)
        tensor_kind = kind if array.ndim == 2 else "f32"
        if from_f16 and tensor_kind != "f32":
            array = array.astype(np.float16).astype(np.float32)
        type_id, data, values = encode(array, tensor_kind, layout)
        tensors.append((legacy, type_id, array.shape, data))
        stored[legacy] = values
    vocab = spm_vocab(model_dir / "tokenizer.model")
    write_file(
        path, container=container, version=version, hparams=hparams, vocab=vocab, tensors=tensors
    )
    return path, stored


# --- bloomz.cpp ----------------------------------------------------------------------------------

_BLOOM_MAP = {
    "word_embeddings": "tok_embeddings",
    "word_embeddings_layernorm": "norm",
    "input_layernorm": "attention_norm",
    "self_attention.query_key_value": "attention.query_key_value",
    "self_attention.dense": "attention.wo",
    "post_attention_layernorm": "ffn_norm",
    "mlp.dense_h_to_4h": "feed_forward.w1",
    "mlp.dense_4h_to_h": "feed_forward.w2",
    "ln_f": "output_norm",
}


def _bloomz_name(name: str) -> str:
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")[1:]  # drop "transformer."
    if parts[0] == "h":
        return f"layers.{parts[1]}.{_BLOOM_MAP['.'.join(parts[2:-1])]}.{parts[-1]}"
    return f"{_BLOOM_MAP['.'.join(parts[:-1])]}.{parts[-1]}"


def write_bloomz(path: Path, model_dir: Path, *, kind: str) -> tuple[Path, dict[str, np.ndarray]]:
    """bloomz.cpp's file of the tiny BLOOM: f32, f16, or q4_0/q4_1 as its quantize tool wrote it.

    Returns the file and the float32 values stored, by HF name (query_key_value in HF order).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = model.config
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    if "lm_head.weight" not in state:  # transformers of 2023 listed the tied head too
        state["lm_head.weight"] = state["transformer.word_embeddings.weight"]
    ftype = FTYPE[kind]
    hparams = [
        config.vocab_size,
        config.hidden_size,
        1,
        config.n_head,
        config.n_layer,
        config.hidden_size // config.n_head,
        ftype,
    ]
    vocab = []
    for i in range(config.vocab_size):
        text = tokenizer.decode([i]) if i < len(tokenizer) else ""
        vocab.append((text.encode("utf-8"), 0.0))
    tensors, stored = [], {}
    for name, array in state.items():
        data = array
        if "query_key_value" in name:
            rest = data.shape[1:]
            grouped = data.reshape(config.n_head, 3, -1)
            data = np.concatenate([grouped[:, 0], grouped[:, 1], grouped[:, 2]], axis=0)
            data = data.reshape(array.shape[0], *rest)
        if data.ndim == 1 or kind == "f32":
            tensor_kind = "f32"
        elif kind == "f16":
            tensor_kind = "f16"
        else:  # quantize.cpp: 2-D ".*weight" tensors, read from the f16 file
            tensor_kind = kind
            data = data.astype(np.float16).astype(np.float32)
        type_id, raw, values = encode(data, tensor_kind, "v1")
        tensors.append((_bloomz_name(name), type_id, data.shape, raw))
        if "query_key_value" in name:  # back to HF's per-head order
            q, k, v = np.split(values, 3, axis=0)
            per = [x.reshape(config.n_head, -1) for x in (q, k, v)]
            values = np.stack(per, axis=1).reshape(array.shape)
        stored[name] = values
    write_file(path, container="ggml", version=0, hparams=hparams, vocab=vocab, tensors=tensors)
    return path, stored
