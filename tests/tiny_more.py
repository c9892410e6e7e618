"""Tiny Falcon, GLM-4, MiniCPM3 and byte-level-BPE LLaMA checkpoints (random seeded weights,
tokenizers trained locally).

Falcon, GLM-4 and MiniCPM3 convert through the pinned upstream converter. Their tokenizers are
ones upstream has never seen (its pre-tokenizer hash list does not know them), as for any
fine-tune that adds a token. The LLaMAs with a GPT-2-style byte-level BPE have the shapes of
Llama 3 and SmolLM2 (special tokens, post-processor, chat template), trained on the corpus.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tiny import CORPUS, _jitter_norms, _save_llama_tokenizer, train_sentencepiece
from tokenizer_training import as_transformers_tokenizer, train_byte_bpe

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


# Llama 3's split regex (tokenizer.json's Split pre-tokenizer, then ByteLevel without a regex).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)  # fmt: skip
SMOLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>")
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _llama_bpe_tokenizer(out_dir: Path, style: str, vocab_size: int) -> Any:
    """``llama3``: Split(Llama 3 regex) + ByteLevel, specials appended after the vocab, BOS added by
    a Sequence[ByteLevel, TemplateProcessing] post-processor. ``smollm``: ByteLevel with the GPT-2
    regex, specials first, a ByteLevel post-processor (no BOS), ChatML. Both add ``<think>`` as a
    plain (not special) added token. Saved as transformers writes it; returns the fast tokenizer."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    llama3 = style == "llama3"
    tokenizer = Tokenizer(models.BPE(byte_fallback=False, ignore_merges=llama3))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level]) if llama3 else byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[] if llama3 else list(SMOLLM_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(CORPUS)], trainer)
    if llama3:
        tokenizer.add_special_tokens(list(LLAMA3_SPECIALS))
        bos = LLAMA3_SPECIALS[0]
        template = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B:1",
            special_tokens=[(bos, tokenizer.token_to_id(bos))],
        )
        tokenizer.post_processor = processors.Sequence(
            [processors.ByteLevel(trim_offsets=False), template]
        )
        names = {"bos_token": bos, "eos_token": "<|eot_id|>"}
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
        names |= {"unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    tokenizer.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)
    fast.chat_template = LLAMA3_CHAT if llama3 else CHATML
    fast.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"  # the published files' class names
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast" if llama3 else "GPT2Tokenizer"
    if not llama3:
        config["add_prefix_space"] = False
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return fast


def make_llama_bpe(
    out_dir: Path, *, style: str = "llama3", vocab_rows: int | None = None, seed: int = 0
) -> Path:
    """A LlamaForCausalLM with a byte-level BPE tokenizer: ``llama3`` (GQA 4/2, untied, Llama 3.1
    rope scaling, theta 500000) or ``smollm`` (SmolLM2-135M's shape in small: GQA 6/2, tied
    embeddings, the embedding padded to 49152 rows, which upstream gives add_bos_token=false)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if style not in ("llama3", "smollm"):
        raise ValueError(f"unknown style {style!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = _llama_bpe_tokenizer(out_dir, style, 700)
    llama3 = style == "llama3"
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
    if llama3:
        rope = {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
        }  # fmt: skip
    config = LlamaConfig(
        vocab_size=vocab_rows or (len(fast) if llama3 else 49152),
        hidden_size=64 if llama3 else 96,
        intermediate_size=128 if llama3 else 192,
        num_hidden_layers=2,
        num_attention_heads=4 if llama3 else 6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=not llama3,
        rope_parameters=rope,
        initializer_range=0.05,
        bos_token_id=fast.bos_token_id,
        eos_token_id=[fast.eos_token_id, fast.convert_tokens_to_ids(LLAMA3_SPECIALS[1])]
        if llama3
        else fast.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(config), out_dir, seed)


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(model_dir) / "config.json").read_text()))
