"""Factories for tiny Hugging Face checkpoints: random seeded weights, tokenizers trained locally.

Used by the test fixtures in conftest.py and by the benchmarks. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tokenizer_training import (
    as_transformers_tokenizer,
    train_byte_bpe,
    train_llama_sentencepiece,
)

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus.txt"


def train_sentencepiece(out_dir: Path, *, vocab_size: int = 800, corpus: Path = CORPUS) -> Path:
    """A LLaMA-style sentencepiece BPE model (byte fallback, split digits) trained on ``corpus``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return train_llama_sentencepiece(out_dir / "tokenizer", vocab_size, input_file=corpus)


def _save_llama_tokenizer(
    out_dir: Path, spm_model: Path, *, add_pad: bool, json_only: bool, legacy: bool = False
) -> int:
    """Write the transformers tokenizer files; returns the tokenizer length.

    ``legacy``: the 2023 LLaMA tokenizer (Vicuna, Chimera): BOS added, and a word after a special
    token gets sentencepiece's leading space, as llama.cpp does.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    staging = out_dir / "_spm"
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copy(spm_model, staging / "tokenizer.model")
    options = {"legacy": True, "add_bos_token": True} if legacy else {"legacy": False}
    tokenizer = LlamaTokenizer.from_pretrained(str(staging), **options)
    if add_pad:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(str(out_dir))
    if legacy:  # transformers 5 saves neither; without them a reload is not legacy
        config_file = out_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.update(options)
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.rmtree(staging)
    if json_only:
        (out_dir / "tokenizer.model").unlink(missing_ok=True)
    else:
        # transformers 5 does not write tokenizer.model: copy it (the original, without <pad>).
        shutil.copy(spm_model, out_dir / "tokenizer.model")
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    return len(reloaded)


def _jitter_norms(model: object, seed: int) -> None:
    """Norm weights of ones hide mapping mistakes; make them distinct."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():  # type: ignore[attr-defined]
            if "norm" in name and param.dim() == 1:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def make_llama(
    out_dir: Path,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int = 256,
    vocab_size: int = 800,
    tie_embeddings: bool = False,
    add_pad: bool = False,
    tokenizer: str = "sentencepiece",  # or "json": only tokenizer.json
    dtype: str = "float32",
    rope_theta: float = 10000.0,
    max_positions: int = 512,
    init_std: float = 0.05,
    seed: int = 0,
    spm_model: Path | None = None,
    legacy_tokenizer: bool = False,
) -> Path:
    """A random LlamaForCausalLM checkpoint with a locally trained sentencepiece tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_model = spm_model or train_sentencepiece(out_dir / "_train", vocab_size=vocab_size)
    n_vocab = _save_llama_tokenizer(
        out_dir,
        spm_model,
        add_pad=add_pad,
        json_only=tokenizer == "json",
        legacy=legacy_tokenizer,
    )
    shutil.rmtree(out_dir / "_train", ignore_errors=True)
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_embeddings,
        rope_theta=rope_theta,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=n_vocab - 1 if add_pad else None,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _jitter_norms(model, seed)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def train_bpe_tokenizer(
    out_dir: Path, *, vocab_size: int = 600, style: str = "bloom", corpus: Path = CORPUS
) -> int:
    """A byte-level BPE tokenizer trained locally; ``style`` "bloom" or "gpt2" pre-tokenization."""
    fast = as_transformers_tokenizer(train_byte_bpe(vocab_size, files=[corpus], style=style))
    fast.save_pretrained(str(out_dir))
    return len(fast)


def make_bloom(
    out_dir: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    tokenizer_vocab: int = 600,
    pad_vocab_to: int | None = 640,
    style: str = "bloom",
    seq_length: int = 512,
    dtype: str = "float32",
    init_std: float = 0.05,
    seed: int = 0,
) -> Path:
    """A random BloomForCausalLM whose embedding may have more rows than the tokenizer (like Phoenix)."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens = train_bpe_tokenizer(out_dir, vocab_size=tokenizer_vocab, style=style)
    config = BloomConfig(
        vocab_size=max(n_tokens, pad_vocab_to or 0),
        hidden_size=hidden,
        n_layer=layers,
        n_head=heads,
        layer_norm_epsilon=1e-5,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        architectures=["BloomForCausalLM"],
    )
    config.seq_length = seq_length
    torch.manual_seed(seed)
    model = BloomForCausalLM(config)
    _jitter_norms(model, seed)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def upstream_convert(model_dir: Path, out_file: Path, *, outtype: str = "f16") -> Path:
    """Convert with the pinned upstream convert_hf_to_gguf.py and its own gguf-py (reference output)."""
    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py"), "NO_LOCAL_GGUF": ""}
    env.pop("NO_LOCAL_GGUF")
    command = [
        sys.executable,
        str(source / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"upstream conversion failed:\n{result.stderr[-3000:]}")
    return out_file


def read_config(model_dir: Path) -> dict[str, object]:
    return json.loads((Path(model_dir) / "config.json").read_text())


def write_random_llama(
    out_dir: Path,
    *,
    hidden: int = 2048,
    intermediate: int = 5632,
    layers: int = 16,
    heads: int = 32,
    kv_heads: int = 32,
    vocab: int = 32000,
    shards: int = 2,
    seed: int = 0,
    dtype: str = "bf16",
) -> Path:
    """A big random LlamaForCausalLM (``dtype`` bf16, f16 or f32) written with numpy only (no
    torch): for benchmarks and interrupt tests. The defaults give ~953M parameters (1.9 GB of
    bf16 in 2 shards)."""
    import struct

    import numpy as np

    from ggufkit.formats.safetensors import float32_to_bf16

    encoders = {"bf16": float32_to_bf16, "f16": lambda v: v.astype(np.float16), "f32": np.asarray}
    encode = encoders[dtype]
    itemsize = 4 if dtype == "f32" else 2
    out_dir.mkdir(parents=True, exist_ok=True)
    kv_rows = kv_heads * (hidden // heads)
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = [hidden]
        shapes[p + "self_attn.q_proj.weight"] = [hidden, hidden]
        shapes[p + "self_attn.k_proj.weight"] = [kv_rows, hidden]
        shapes[p + "self_attn.v_proj.weight"] = [kv_rows, hidden]
        shapes[p + "self_attn.o_proj.weight"] = [hidden, hidden]
        shapes[p + "post_attention_layernorm.weight"] = [hidden]
        shapes[p + "mlp.gate_proj.weight"] = [intermediate, hidden]
        shapes[p + "mlp.up_proj.weight"] = [intermediate, hidden]
        shapes[p + "mlp.down_proj.weight"] = [hidden, intermediate]
    shapes["model.norm.weight"] = [hidden]
    shapes["lm_head.weight"] = [vocab, hidden]
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for s in range(shards):
        file_name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[s * per_shard : (s + 1) * per_shard]
        header, offset = {}, 0
        for name in chunk:
            nbytes = itemsize * int(np.prod(shapes[name]))
            header[name] = {
                "dtype": dtype.upper(),
                "shape": shapes[name],
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out_dir / file_name, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            for name in chunk:
                scale, shift = (0.1, 1.0) if len(shapes[name]) == 1 else (0.02, 0.0)
                values = shift + scale * rng.standard_normal(shapes[name], dtype=np.float32)
                handle.write(encode(values).tobytes())
                weight_map[name] = file_name
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    spm = train_sentencepiece(out_dir / "_spm")
    shutil.move(str(spm), out_dir / "tokenizer.model")
    shutil.rmtree(out_dir / "_spm", ignore_errors=True)
    return out_dir


def bindings_eval(model: str) -> tuple[str, list[int], int]:
    """In a child process: load ``model`` through llama_cpp on our build, tokenize and evaluate.

    Returns the library folder llama_cpp was pointed at, the tokens and how many were evaluated.
    """
    from ggufkit.llamacpp.bindings import load_llama_cpp

    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(model_path=model, n_ctx=64, verbose=False)
    try:
        tokens = [int(t) for t in llm.tokenize(b"To be, or not to be", add_bos=True)]
        llm.eval(tokens)
        return os.environ["LLAMA_CPP_LIB_PATH"], tokens, int(llm.n_tokens)
    finally:
        llm.close()
