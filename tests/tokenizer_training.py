"""How ggufkit's tiny tokenizers are trained: LLaMA-style sentencepiece and BLOOM-style byte BPE.

One recipe for the embedded models (scripts/train_tiny.py) and for the test fixtures, so that the
tokenizers the tests convert are the kind the shipped models carry.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# BLOOM's own pre-tokenizer split: words with an optional leading space, punctuation apart.
BLOOM_SPLIT_REGEX = " ?[^(\\s|[.,!?…。，、।۔،])]+"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0-3, as BLOOM numbers them

# LLaMA's tokenizer.model settings: BPE with byte fallback, digits split, no normalization,
# unk/bos/eos at 0/1/2 and no pad piece.
LLAMA_SPM_OPTIONS: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "character_coverage": 1.0,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "minloglevel": 2,
}


def train_llama_sentencepiece(
    prefix: Path,
    vocab_size: int,
    *,
    input_file: Path | None = None,
    sentences: Iterable[str] | None = None,
) -> Path:
    """Train on a text file or on sentences; returns ``<prefix>.model`` (``.vocab`` removed)."""
    import sentencepiece as spm

    if (input_file is None) == (sentences is None):
        raise ValueError("give exactly one of input_file and sentences")
    source: dict[str, Any] = (
        {"input": str(input_file)}
        if input_file is not None
        else {"sentence_iterator": iter(sentences or ())}
    )
    spm.SentencePieceTrainer.train(
        **source, model_prefix=str(prefix), vocab_size=vocab_size, **LLAMA_SPM_OPTIONS
    )
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    return prefix.with_suffix(".model")


def train_byte_bpe(
    vocab_size: int,
    *,
    files: Iterable[Path] = (),
    texts: Iterable[str] = (),
    style: str = "bloom",
) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` with SPECIAL_TOKENS first.

    ``style`` "bloom" splits with BLOOM_SPLIT_REGEX before the byte mapping (no prefix space);
    "gpt2" uses the byte-level pre-tokenizer's own GPT-2 regex.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if style == "bloom":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(BLOOM_SPLIT_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif style == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ValueError(f"unknown byte-level BPE style {style!r}")
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    file_names = [str(f) for f in files]
    if file_names:
        tokenizer.train(file_names, trainer)
    else:
        tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def as_transformers_tokenizer(tokenizer: Any) -> Any:
    """The byte BPE as transformers' fast tokenizer, with BLOOM's special tokens named."""
    from transformers import PreTrainedTokenizerFast

    unk, bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad
    )
