"""Tiny random checkpoints for any text architecture, built from its own transformers config class.

A generic shrinker sets every size field the config class has to a small legal value; the
per-family table OVERRIDES (data) adds what a family needs beyond that (MoE layouts, sliding
windows, soft-capping, QK-norm, ...), and TOKENIZERS names the kind of tokenizer its converter
expects. Weights are random and seeded; norm weights and biases are jittered so that a mapping
mistake cannot hide behind ones and zeros.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.data.tokenizer_training import (
    SPECIAL_TOKENS,
    as_transformers_tokenizer,
    train_byte_bpe,
    train_llama_sentencepiece,
)

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus.txt"
VOCAB = 600  # tokenizer size before the family's own special tokens

# Small legal sizes, set wherever the config class has the field (names differ per family).
SHRINK: dict[str, Any] = {
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "intermediate_size": 128,
    "ffn_hidden_size": 128,
    "n_inner": 128,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "num_kv_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "n_positions": 512,
    "seq_length": 512,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 64,
    "expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_k": 2,
    "n_shared_experts": 1,
    "moe_num_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 32,
    "q_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "sliding_window": 32,
    "initializer_range": 0.05,
    "init_std": 0.05,
    "use_cache": True,
}

# Per family (HF class name): config fields beyond the shrinker's, and tokenizer kinds.
OVERRIDES: dict[str, dict[str, Any]] = {
    # Mistral v0.2+ and Mixtral: no sliding window (llama.cpp's llama graph has none).
    "MistralForCausalLM": {"sliding_window": None},
    "MixtralForCausalLM": {"sliding_window": None},
    # Hybrids: one attention layer of two (transformers' cache needs one).
    "BambaForCausalLM": {"attn_layer_indices": [1]},
    # BitNet b1.58 ties its embeddings (upstream maps no lm_head).
    "BitNetForCausalLM": {"tie_word_embeddings": True},
}
# "bpe": GPT-2-style byte-level BPE (tokenizer.json); "spm": LLaMA sentencepiece (tokenizer.model)
TOKENIZERS: dict[str, str] = {"LlamaForCausalLM": "spm"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIALS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class Variant:
    """One row of the matrix: an architecture with one tokenizer kind."""

    hf_architecture: str
    tokenizer: str  # "bpe" or "spm"

    @property
    def name(self) -> str:
        default = TOKENIZERS.get(self.hf_architecture, "bpe")
        if self.tokenizer == default:
            return self.hf_architecture
        return f"{self.hf_architecture} ({self.tokenizer})"


def variant(name: str) -> Variant:
    """The row ``name`` ("Arch" or "Arch (bpe)")."""
    arch, _, kind = name.partition(" (")
    return Variant(arch, kind.rstrip(")") or TOKENIZERS.get(arch, "bpe"))


def build(row: Variant, out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``row`` with its tokenizer into ``out_dir``."""
    import torch
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cls = getattr(transformers, row.hf_architecture)
    tokenizer = _tokenizer(row.tokenizer, out_dir)
    config = small_config(model_cls.config_class, tokenizer, row.hf_architecture)
    torch.manual_seed(seed)
    model = model_cls(config).float()
    jitter(model, seed)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def small_config(config_cls: Any, tokenizer: Any, hf_architecture: str) -> Any:
    """``config_cls`` with SHRINK's sizes where it has the field, then the family's overrides."""
    defaults = config_cls().to_dict()
    kwargs = {key: value for key, value in SHRINK.items() if key in defaults}
    if "num_key_value_heads" in defaults and defaults.get("num_key_value_heads") is None:
        kwargs.pop("num_key_value_heads", None)
    kwargs.update(OVERRIDES.get(hf_architecture, {}))
    specials = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    kwargs = {**specials, **kwargs}
    kwargs["vocab_size"] = _vocab_size(len(tokenizer), kwargs)
    kwargs["architectures"] = [hf_architecture]
    return config_cls(**kwargs)


def _vocab_size(n_tokens: int, kwargs: dict[str, Any]) -> int:
    multiple = int(kwargs.pop("_vocab_multiple", 1))
    return -(-n_tokens // multiple) * multiple


def jitter(model: Any, seed: int) -> None:
    """Norm weights of ones and zero biases hide mapping mistakes: make them distinct."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() and param.dim() == 1:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def _tokenizer(kind: str, out_dir: Path) -> Any:
    if kind == "bpe":
        fast = as_transformers_tokenizer(train_byte_bpe(VOCAB, files=[CORPUS], style="gpt2"))
        fast.add_special_tokens({"additional_special_tokens": list(CHAT_SPECIALS)})
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(str(out_dir))
        return fast
    if kind == "spm":
        return _spm_tokenizer(out_dir)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def _spm_tokenizer(out_dir: Path) -> Any:
    from transformers import AutoTokenizer, LlamaTokenizer

    staging = out_dir / "_spm"
    staging.mkdir(parents=True, exist_ok=True)
    model = train_llama_sentencepiece(staging / "tokenizer", VOCAB, input_file=CORPUS)
    tokenizer = LlamaTokenizer.from_pretrained(str(staging), legacy=False)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", "[").replace("<|im_end|>", "]")
    tokenizer.save_pretrained(str(out_dir))
    shutil.copy(model, out_dir / "tokenizer.model")  # transformers 5 does not write it
    shutil.rmtree(staging)
    return AutoTokenizer.from_pretrained(str(out_dir))


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))


__all__ = ["SPECIAL_TOKENS", "Variant", "build", "read_config", "small_config", "variant"]
