"""The tokenizers of the embedded models, trained by scripts/train_tiny.py on its training text."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

# The tokenizer recipe of the tests and the embedded models (dev-only, not in the package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tokenizer_training import (
    as_transformers_tokenizer,
    train_byte_bpe,
    train_llama_sentencepiece,
)

LLAMA_VOCAB = 2048
BLOOM_TOKENS = 2000


def train_sentencepiece(texts: list[str], workdir: Path) -> Path:
    """A LLaMA-style sentencepiece BPE of LLAMA_VOCAB pieces, trained on the texts' lines."""
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    return train_llama_sentencepiece(workdir / "spm", LLAMA_VOCAB, sentences=lines)


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
    """A byte-level BPE with BLOOM's pre-tokenizer and special tokens, saved for transformers."""
    fast = as_transformers_tokenizer(train_byte_bpe(BLOOM_TOKENS, texts=texts))
    fast.save_pretrained(str(out_dir))
    return fast


def encode_stream(tokenizer: Any, texts: list[str], eos: int) -> torch.Tensor:
    """Token ids of the texts end to end, each text closed by EOS (no BOS: windows add it)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)
