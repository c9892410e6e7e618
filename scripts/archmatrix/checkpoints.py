"""Tiny random checkpoints for any text architecture, built from its own transformers config class.

A generic shrinker sets every size field the config class has to a small legal value; the
per-family table OVERRIDES (data) adds what a family needs beyond that (MoE layouts, sliding
windows, soft-capping, QK-norm, ...), and TOKENIZERS names the kind of tokenizer its converter
expects. Weights are random and seeded; norm weights and biases are jittered so that a mapping
mistake cannot hide behind ones and zeros.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The tokenizer recipe of the tests and the embedded models (dev-only, not in the package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tests"))

from tokenizer_training import (
    LLAMA_SPM_OPTIONS,
    SPECIAL_TOKENS,
    as_transformers_tokenizer,
    train_byte_bpe,
)

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus.txt"
VOCAB = 600  # tokenizer size before the family's own special tokens
BUILD_NOTES = "archmatrix-notes.txt"  # what the builder did beyond the config, a line each

# Small legal sizes, set wherever the config class has the field (names differ per family).
SHRINK: dict[str, Any] = {
    "hidden_size": 64,
    "n_embd": 64,
    "d_model": 64,
    "intermediate_size": 128,
    "ffn_hidden_size": 256,  # GPT-style names: 4 x hidden, as Falcon's converter assumes
    "n_inner": 256,
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
    "max_seq_len": 512,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 64,
    "expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "num_experts_per_token": 2,
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
    # state-space and linear-attention mixers (d_ssm = n_heads x d_head = expand x hidden = 128)
    "mamba_n_heads": 16,
    "mamba_num_heads": 16,
    "mamba_d_head": 8,
    "mamba_head_dim": 8,
    "mamba_d_ssm": 128,
    "mamba_d_state": 16,
    "ssm_state_size": 16,
    "mamba_chunk_size": 32,
    "mamba_dt_rank": 8,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_head_dim": 16,
    "linear_num_heads": 4,
    "initializer_range": 0.05,
    "init_std": 0.05,
    "use_cache": True,
}

from archmatrix.families_data import (  # noqa: E402  (the per-family tables)
    ADDS_BOS,
    CANNOT_BUILD,
    DECISIVE_ROUTERS,
    F16_WEIGHTS,
    NOTES,
    OVERRIDES,
    SPECIALS,
    TOKENIZERS,
    UNSCALED_ATTENTION,
    UPSTREAM_CAUSES,
)

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
    tokenizer = _tokenizer(row.tokenizer, out_dir, SPECIALS.get(row.hf_architecture))
    if row.tokenizer == "bpe":
        tokenizer = as_the_family_loads_it(
            out_dir, model_cls.config_class.model_type, row.hf_architecture in ADDS_BOS
        )
    config = small_config(model_cls.config_class, tokenizer, row.hf_architecture)
    torch.manual_seed(seed)
    model = model_cls(config).float()
    jitter(model, seed, unscaled_attention=row.hf_architecture in UNSCALED_ATTENTION)
    notes = []
    if row.hf_architecture in F16_WEIGHTS:
        as_f16_values(model)
        notes.append("weights written as f16 values (the f16 file holds transformers' own)")
    if row.hf_architecture in F16_WEIGHTS | DECISIVE_ROUTERS:  # MoE rows: how decisive
        from archmatrix.measure import random_ids_for
        from archmatrix.routers import make_decisive

        ids = random_ids_for(int(config.vocab_size))  # the positions measure.py measures
        redraw = row.hf_architecture in DECISIVE_ROUTERS
        notes.append(make_decisive(model.eval(), ids, seed, redraw=redraw))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / BUILD_NOTES).write_text("".join(f"{n}\n" for n in notes), encoding="utf-8")
    return out_dir


def as_the_family_loads_it(out_dir: Path, model_type: str, adds_bos: bool = False) -> Any:
    """transformers 5 loads a tokenizer.json through the family's tokenizer class, which may
    replace its pre-tokenizer (Qwen2's regex, for one): save it as loaded, so that the file the
    converter reads is the tokenizer transformers runs."""
    from transformers import AutoTokenizer

    config_file = out_dir / "config.json"
    config_file.write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if adds_bos:  # transformers 5 keeps it in tokenizer.json's post-processor, as released
        tokenizer.add_bos_token = True
        tokenizer.save_pretrained(str(out_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    config_file.unlink()
    return tokenizer


def small_config(config_cls: Any, tokenizer: Any, hf_architecture: str) -> Any:
    """``config_cls`` with SHRINK's sizes where it has the field, then the family's overrides."""
    defaults = config_cls().to_dict()
    kwargs = {key: value for key, value in SHRINK.items() if key in defaults}
    if "num_key_value_heads" in defaults and defaults.get("num_key_value_heads") is None:
        kwargs.pop("num_key_value_heads", None)
    kwargs.update(layer_plan(defaults))
    if "qk_rope_head_dim" in defaults:  # multi-head latent attention: head_dim is the rope part
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    kwargs.update(OVERRIDES.get(hf_architecture, {}))
    # For finding a row's cause by hand (never in a recorded run): config fields as JSON.
    kwargs.update(json.loads(os.environ.get("ARCHMATRIX_TRY_CONFIG") or "{}"))
    specials = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    kwargs = {**specials, **kwargs}
    kwargs["vocab_size"] = _vocab_size(len(tokenizer), kwargs)
    if "vocab_size_per_layer_input" in defaults:
        kwargs["vocab_size_per_layer_input"] = kwargs["vocab_size"]
    kwargs["architectures"] = [hf_architecture]
    return config_cls(**kwargs)


def layer_plan(defaults: dict[str, Any]) -> dict[str, Any]:
    """The number of layers and the per-layer lists for it: one period of the family's own
    attention pattern (e.g. three sliding layers then a full one, which llama.cpp's graphs often
    fix), else two layers mixing the first two kinds the family has, so that each is exercised."""
    n_default = defaults.get("num_hidden_layers")
    lists = {
        key: value
        for key, value in defaults.items()
        if isinstance(value, list) and value and len(value) == n_default
    }
    kinds = defaults.get("layer_types")
    n = 2
    if isinstance(kinds, list) and "full_attention" in kinds:
        n = min(max(2, kinds.index("full_attention") + 1), 8)
    plan: dict[str, Any] = {key: value[:n] for key, value in lists.items()}
    for key, value in lists.items():
        distinct = list(dict.fromkeys(value))
        if key.endswith("layer_types") and len(set(plan[key])) < 2 <= len(distinct):
            plan[key] = sorted(distinct[:2], key=lambda kind: kind == "full_attention")
            plan[key] += [plan[key][-1]] * (n - 2)
    if "num_hidden_layers" in defaults:
        plan["num_hidden_layers"] = n
    return plan


def _vocab_size(n_tokens: int, kwargs: dict[str, Any]) -> int:
    multiple = int(kwargs.pop("_vocab_multiple", 1))
    return -(-n_tokens // multiple) * multiple


def jitter(model: Any, seed: int, *, unscaled_attention: bool = False) -> None:
    """Norm weights of ones and zero biases hide mapping mistakes: make them distinct. So does
    any other weight a family initialises to zeros (AFMoE's router: every expert choice a tie,
    broken differently by each runtime; expert biases, attention sinks, scales). Where the
    attention has no 1/sqrt(head_dim) (``unscaled_attention``), the query norm carries it."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() and param.dim() == 1:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
                if unscaled_attention and name.endswith("q_norm.weight"):
                    param.mul_(param.numel() ** -0.5)  # the norm's width is the head's
            elif name.endswith(".bias") or (param.numel() > 1 and not bool(param.any())):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def as_f16_values(model: Any) -> None:
    """Every weight rounded to its nearest f16 value (kept in its dtype): the f16 GGUF then
    holds exactly the weights transformers computes with, as a released f16 checkpoint's would."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.float16).to(param.dtype))


def _tokenizer(
    kind: str, out_dir: Path, specials: tuple[tuple[str, ...], str | None] | None
) -> Any:
    if kind == "bpe":
        fast = as_transformers_tokenizer(train_byte_bpe(VOCAB, files=[CORPUS], style="gpt2"))
        extra, eos = specials or ((), None)
        fast.add_special_tokens({"additional_special_tokens": [*CHAT_SPECIALS, *extra]})
        if eos is not None:
            fast.eos_token = fast.pad_token = eos
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(str(out_dir))
        return fast
    if kind in ("spm", "spm-raw"):
        return _spm_tokenizer(out_dir, dummy_prefix=kind == "spm")
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def _spm_tokenizer(out_dir: Path, *, dummy_prefix: bool) -> Any:
    """LLaMA's sentencepiece recipe; without the dummy prefix space for Gemma ("spm-raw")."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    staging = out_dir / "_spm"
    staging.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=str(CORPUS),
        model_prefix=str(staging / "tokenizer"),
        vocab_size=VOCAB,
        **{**LLAMA_SPM_OPTIONS, "add_dummy_prefix": dummy_prefix},
    )
    model = staging / "tokenizer.model"
    options: dict[str, Any] = {"legacy": True, "add_bos_token": True}  # BOS added, as theirs
    if not dummy_prefix:
        options["add_prefix_space"] = False
    tokenizer = LlamaTokenizer.from_pretrained(str(staging), **options)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", "[").replace("<|im_end|>", "]")
    tokenizer.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"  # transformers 5 saves neither option
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, **options}, indent=2), encoding="utf-8")
    shutil.copy(model, out_dir / "tokenizer.model")  # transformers 5 does not write it
    shutil.rmtree(staging)
    return AutoTokenizer.from_pretrained(str(out_dir))


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))


__all__ = [
    "CANNOT_BUILD",
    "NOTES",
    "SPECIAL_TOKENS",
    "TOKENIZERS",
    "UPSTREAM_CAUSES",
    "Variant",
    "build",
    "read_config",
    "small_config",
    "variant",
]
