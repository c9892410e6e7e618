"""Tiny Falcon, GLM-4 and MiniCPM3 checkpoints (random seeded weights, tokenizers trained locally).

These convert through the pinned upstream converter. Their tokenizers are ones upstream has never
seen (its pre-tokenizer hash list does not know them), as for any fine-tune that adds a token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tiny import CORPUS, _jitter_norms, _save_llama_tokenizer, train_sentencepiece

from ggufkit.data.tokenizer_training import as_transformers_tokenizer, train_byte_bpe

# GLM's own special tokens; upstream's GLM-4 vocab reads <|endoftext|> and <|user|>.
GLM_SPECIALS = ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>")


def _byte_bpe(out_dir: Path, vocab_size: int, extra_specials: tuple[str, ...] = ()) -> Any:
    """A GPT-2-style byte-level BPE saved as a transformers tokenizer; returns it."""
    fast = as_transformers_tokenizer(train_byte_bpe(vocab_size, files=[CORPUS], style="gpt2"))
    if extra_specials:
        fast.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    fast.save_pretrained(str(out_dir))
    return fast


def _save(model: Any, out_dir: Path, seed: int) -> Path:
    _jitter_norms(model, seed)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def make_falcon(out_dir: Path, *, multi_query: bool = True, seed: int = 0) -> Path:
    """FalconForCausalLM (Falcon-7B's shape: multi-query, parallel attention, rotary)."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_vocab = len(_byte_bpe(out_dir, 600))
    config = FalconConfig(
        vocab_size=n_vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=multi_query,
        new_decoder_architecture=False,
        parallel_attn=True,
        bias=False,
        alibi=False,
        layer_norm_epsilon=1e-5,
        initializer_range=0.05,
        bos_token_id=1,
        eos_token_id=2,
        architectures=["FalconForCausalLM"],
    )
    torch.manual_seed(seed)
    return _save(FalconForCausalLM(config), out_dir, seed)


def make_glm4(out_dir: Path, *, seed: int = 0) -> Path:
    """Glm4ForCausalLM with GQA, partial rotary and GLM's special tokens."""
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_bpe(out_dir, 600, GLM_SPECIALS)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Glm4Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        attention_bias=True,
        initializer_range=0.05,
        pad_token_id=eos,
        eos_token_id=eos,
        bos_token_id=None,
        architectures=["Glm4ForCausalLM"],
    )
    torch.manual_seed(seed)
    return _save(Glm4ForCausalLM(config), out_dir, seed)


def make_minicpm3(out_dir: Path, *, spm_model: Path | None = None, seed: int = 0) -> Path:
    """MiniCPM3ForCausalLM (multi-head latent attention) with a sentencepiece tokenizer.model.

    llama.cpp takes v_head_dim as hidden_size / heads, and fixes scale_emb 12, scale_depth 1.4
    and dim_model_base 256: the transformers defaults, kept here.
    """
    import torch
    from transformers import MiniCPM3Config, MiniCPM3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_model = spm_model or train_sentencepiece(out_dir / "_train")
    n_vocab = _save_llama_tokenizer(out_dir, spm_model, add_pad=False, json_only=False, legacy=True)
    shutil.rmtree(out_dir / "_train", ignore_errors=True)
    config = MiniCPM3Config(
        vocab_size=n_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.05,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        architectures=["MiniCPM3ForCausalLM"],
    )
    torch.manual_seed(seed)
    return _save(MiniCPM3ForCausalLM(config), out_dir, seed)


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(model_dir) / "config.json").read_text()))
