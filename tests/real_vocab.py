"""Real tokenizers for tests, rebuilt from the vocab-only GGUFs that ship with the pinned llama.cpp.

``vendor/llama.cpp/models/ggml-vocab-<name>.gguf`` holds a published model's real tokens and
merges; ``.inp``/``.out`` beside it are texts and the token ids the original Hugging Face tokenizer
gave for them. Rebuilding ``tokenizer.json`` from the GGUF and checking it against those pairs
gives the tests a real tokenizer (here Llama 3's) without a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

SEPARATOR = "\n__ggml_vocab_test__\n"
# Llama 3's published pre-tokenizer split
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def vocab_file(source: Path, name: str) -> Path:
    return source / "models" / f"ggml-vocab-{name}.gguf"


def reference_pairs(vocab: Path) -> list[tuple[str, list[int]]]:
    """(text, ids the original HF tokenizer gave, without special tokens) from ``.inp``/``.out``."""
    texts = Path(f"{vocab}.inp").read_text(encoding="utf-8").split(SEPARATOR)
    ids = Path(f"{vocab}.out").read_text(encoding="utf-8").split("\n")
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").rstrip("\n")
    assert len(ids) >= len(texts)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids, strict=False)]


def write_llama3_tokenizer(vocab: Path, out_dir: Path) -> None:
    """Llama 3's ``tokenizer.json`` and ``tokenizer_config.json`` from its vocab GGUF."""
    reader = gguf.GGUFReader(vocab)
    tokens: list[str] = reader.fields["tokenizer.ggml.tokens"].contents()
    merges: list[str] = reader.fields["tokenizer.ggml.merges"].contents()
    types: list[int] = reader.fields["tokenizer.ggml.token_type"].contents()
    bos = tokens[int(reader.fields["tokenizer.ggml.bos_token_id"].contents())]
    special = [i for i, kind in enumerate(types) if kind == gguf.TokenType.CONTROL]
    template = {"SpecialToken": {"id": bos, "type_id": 0}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in special
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_SPLIT},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {
                    "type": "ByteLevel",
                    "add_prefix_space": True,
                    "trim_offsets": False,
                    "use_regex": True,
                },
                {
                    "type": "TemplateProcessing",
                    "single": [template, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        template,
                        {"Sequence": {"id": "A", "type_id": 0}},
                        template,
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {
                        bos: {"id": bos, "ids": [tokens.index(bos)], "tokens": [bos]}
                    },
                },
            ],
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": [merge.split(" ", 1) for merge in merges],
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), "utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": "<|eot_id|>",
        "model_max_length": 131072,
        "chat_template": LLAMA3_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")


def make_llama3(out_dir: Path, vocab: Path, *, seed: int = 0) -> Path:
    """A random bf16 LLaMA (GQA, tied embeddings, llama3 rope) carrying Llama 3's real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    write_llama3_tokenizer(vocab, out_dir)
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=128009,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(out_dir))
    return out_dir
