"""The tokenizers of the embedded models, trained by scripts/train_tiny.py on its training text."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

LLAMA_VOCAB = 2048
BLOOM_TOKENS = 2000
# BLOOM's own pre-tokenizer split: words with an optional leading space, punctuation apart.
BLOOM_SPLIT_REGEX = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def train_sentencepiece(texts: list[str], workdir: Path) -> Path:
    """A LLaMA-style sentencepiece BPE: byte fallback, split digits, identity normalization."""
    import sentencepiece as spm

    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    prefix = workdir / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=LLAMA_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def save_llama_tokenizer(spm_model: Path, out_dir: Path) -> Any:
    """Write transformers' tokenizer files beside a copy of tokenizer.model; return the tokenizer."""
    from transformers import LlamaTokenizer

    staging = Path(tempfile.mkdtemp(prefix="spm-"))
    shutil.copy(spm_model, staging / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(str(staging), legacy=False, add_bos_token=True)
    if "<pad>" in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 does not write tokenizer.model itself, nor the BOS/EOS flags LLaMA's carries
    # (converters read them from tokenizer_config.json).
    shutil.copy(spm_model, out_dir / "tokenizer.model")
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=True, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(staging)
    return tokenizer


def add_pad_piece(spm_model: Path, output: Path) -> Path:
    """A copy of the sentencepiece model with ``<pad>`` appended as a user-defined piece."""
    from sentencepiece import sentencepiece_model_pb2

    model_pb2: Any = sentencepiece_model_pb2  # generated protobuf code: untyped
    proto = model_pb2.ModelProto()
    proto.ParseFromString(spm_model.read_bytes())
    piece = proto.pieces.add()
    piece.piece = "<pad>"
    piece.score = 0.0
    piece.type = model_pb2.ModelProto.SentencePiece.USER_DEFINED
    output.write_bytes(proto.SerializeToString())
    return output


def train_bloom_tokenizer(texts: list[str], out_dir: Path) -> Any:
    """A byte-level BPE with BLOOM's pre-tokenizer and special tokens, trained with ``tokenizers``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BLOOM_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BLOOM_TOKENS,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.save_pretrained(str(out_dir))
    return fast


def encode_stream(tokenizer: Any, texts: list[str], eos: int) -> torch.Tensor:
    """Token ids of the texts end to end, each text closed by EOS (no BOS: windows add it)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)
