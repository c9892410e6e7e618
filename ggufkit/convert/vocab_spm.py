"""The LLaMA (sentencepiece) vocabulary: from ``tokenizer.model``, or else from ``tokenizer.json``.

llama.cpp's "llama" tokenizer is sentencepiece's BPE: it repeatedly merges the adjacent pair whose
joined text is the vocabulary entry with the highest *score*. From ``tokenizer.model`` the scores
are sentencepiece's own. A ``tokenizer.json`` has no scores, only merge ranks, so each token's
score is minus the rank of the first merge that makes it: the same order, hence the same
tokenization. Added tokens (``added_tokens.json``, ``added_tokens_decoder``), special ids,
add_bos/add_eos and the chat template follow, through ``gguf.SpecialVocab``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from ggufkit.core.errors import TokenizerError
from ggufkit.core.fsutil import read_json
from ggufkit.core.log import get_logger

log = get_logger("convert.vocab_spm")

SPM_SPACE = "\u2581"  # sentencepiece's visible space
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def looks_special(text: str) -> bool:
    """Added tokens some checkpoints forget to mark special (llama.cpp treats them as control)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


class Vocab:
    """Token texts, scores and types, indexed by id, padded to the model's vocab size."""

    def __init__(self, size: int) -> None:
        self.tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(size)]
        self.scores: list[float] = [-10000.0] * size
        self.types: list[int] = [TokenType.UNUSED] * size

    def __len__(self) -> int:
        return len(self.tokens)

    def set(self, token_id: int, text: str | bytes, score: float, kind: int) -> bool:
        if not 0 <= token_id < len(self.tokens):
            log.warning(
                "token %d (%r) is beyond the model's %d rows; ignored", token_id, text, len(self)
            )
            return False
        self.tokens[token_id] = text.encode("utf-8") if isinstance(text, str) else text
        self.scores[token_id] = score
        self.types[token_id] = kind
        return True


def check_fits(path: Path, n_tokens: int, size: int | None) -> int:
    """The vocabulary size: ``size`` (the model's), or ``n_tokens`` without one. A tokenizer with
    more tokens than the model has rows is not this model's: refuse it rather than drop tokens."""
    if size is not None and n_tokens > size:
        raise TokenizerError(
            f"{path} has token ids up to {n_tokens - 1}, but the model's vocab_size is {size}",
            hint="the tokenizer does not belong to this checkpoint: use the checkpoint's own",
            path=path,
        )
    return n_tokens if size is None else size


def sentencepiece_vocab(model_file: Path, size: int | None) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_file))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(
            f"{model_file} is not a sentencepiece model: {exc}",
            hint="restore tokenizer.model from the original checkpoint",
            path=model_file,
        ) from exc
    n_pieces = processor.vocab_size()
    vocab = Vocab(check_fits(model_file, n_pieces, size))
    for token_id in range(n_pieces):
        if processor.IsUnknown(token_id):
            kind = TokenType.UNKNOWN
        elif processor.IsControl(token_id):
            kind = TokenType.CONTROL
        elif processor.IsUnused(token_id):
            kind = TokenType.UNUSED
        elif processor.IsByte(token_id):
            kind = TokenType.BYTE
        else:
            kind = TokenType.NORMAL
        vocab.set(token_id, processor.IdToPiece(token_id), processor.GetScore(token_id), kind)
    return vocab


def tokenizer_json_vocab(tokenizer_file: Path, size: int | None, data: Any = None) -> Vocab:
    """The vocabulary of a sentencepiece-style tokenizer.json (``data``: the file as parsed)."""
    if data is None:
        data = read_json(tokenizer_file, TokenizerError)
    model = data.get("model") if isinstance(data, dict) else None
    if not (
        isinstance(model, dict)
        and model.get("type") == "BPE"
        and isinstance(model.get("vocab"), dict)
        and model.get("byte_fallback", False)
    ):
        raise TokenizerError(
            f"{tokenizer_file} is not a LLaMA-style (sentencepiece BPE with byte fallback) tokenizer",
            hint='this converter handles LLaMA-1/2 vocabularies; try `engine="upstream"`',
            path=tokenizer_file,
        )
    pieces: dict[str, int] = model["vocab"]
    vocab = Vocab(check_fits(tokenizer_file, max(pieces.values(), default=-1) + 1, size))
    rank_of: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank_of.setdefault(left + right, rank)
    n_merges = len(rank_of)
    specials = {t["id"] for t in data.get("added_tokens") or [] if t.get("special")}
    for text, token_id in pieces.items():
        if _BYTE_TOKEN.match(text):
            vocab.set(token_id, text, 0.0, TokenType.BYTE)
        elif token_id in specials or text == model.get("unk_token"):
            kind = TokenType.UNKNOWN if text == model.get("unk_token") else TokenType.CONTROL
            vocab.set(token_id, text, 0.0, kind)
        else:
            # Merge results rank by their first merge; single characters come after them all.
            score = -float(rank_of[text]) if text in rank_of else -float(n_merges + token_id)
            vocab.set(token_id, text, score, TokenType.NORMAL)
    return vocab


def apply_added_tokens(vocab: Vocab, model_dir: Path) -> list[str]:
    """Tokens added on top of the base vocabulary (e.g. Vicuna's ``<pad>`` at 32000)."""
    added: list[str] = []
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        entries = read_json(added_file, TokenizerError)
        if not isinstance(entries, dict):
            raise TokenizerError(f"{added_file} should map tokens to ids", path=added_file)
        for text, token_id in entries.items():
            if vocab.set(int(token_id), text, -1000.0, TokenType.USER_DEFINED):
                added.append(text)
    config_file = model_dir / "tokenizer_config.json"
    decoder = (
        read_json(config_file, TokenizerError).get("added_tokens_decoder")
        if config_file.is_file()
        else None
    )
    for key, entry in (decoder or {}).items():
        token_id, text = int(key), str(entry["content"])
        if entry.get("special") or looks_special(text):
            kind = TokenType.CONTROL
        else:
            # llama.cpp matches user-defined tokens against raw text: spaces, not the visible "▁".
            text, kind = text.replace(SPM_SPACE, " "), TokenType.USER_DEFINED
        if 0 <= token_id < len(vocab) and vocab.types[token_id] != TokenType.UNUSED:
            old = vocab.tokens[token_id]
            if old != text.encode("utf-8"):
                log.debug("added token %d replaces %r with %r", token_id, old, text)
        if vocab.set(token_id, text, -1000.0, kind) and text not in added:
            added.append(text)
    return added


def _json_added_tokens(vocab: Vocab, data: Any) -> list[str]:
    """Added tokens from tokenizer.json itself (when tokenizer_config.json does not list them)."""
    added = []
    for entry in data.get("added_tokens") or []:
        token_id, text = int(entry["id"]), str(entry["content"])
        if token_id < len(vocab) and vocab.tokens[token_id] == text.encode("utf-8"):
            continue
        kind = (
            TokenType.CONTROL
            if entry.get("special") or looks_special(text)
            else TokenType.USER_DEFINED
        )
        if vocab.set(token_id, text, -1000.0, kind):
            added.append(text)
    return added


def template_adds(data: Any) -> dict[str, bool]:
    """Whether tokenizer.json's post-processor puts a special token first (BOS) or last (EOS).

    ``gguf.SpecialVocab`` reads only templates with a special token in them; a template of the
    bare sequence (what transformers 5 writes for LLaMA) means neither, and saying nothing would
    let llama.cpp add a BOS that the reference tokenizer does not. ``data``: tokenizer.json as
    parsed (None without one).
    """
    processor = (data or {}).get("post_processor") or {}
    found: dict[str, bool] = {}
    for step in processor.get("processors", [processor]):
        single = step.get("single") if step.get("type") == "TemplateProcessing" else None
        if isinstance(single, list) and single:
            found["bos"] = "SpecialToken" in single[0]
            found["eos"] = len(single) > 1 and "SpecialToken" in single[-1]
    return found


def add_space_prefix(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """tokenizer_config.json's ``add_prefix_space``, which upstream writes first for a LLaMA."""
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        prefix_space = read_json(config_file, TokenizerError).get("add_prefix_space")
        if isinstance(prefix_space, bool):
            writer.add_add_space_prefix(prefix_space)


def set_llama_vocab(
    writer: gguf.GGUFWriter,
    model_dir: Path,
    vocab_size: int | None,
    tokenizer_json: Any = None,
) -> list[str]:
    """Write the tokenizer keys; returns notes for the conversion result. ``tokenizer_json``:
    the directory's tokenizer.json as the caller parsed it (read here, once, otherwise)."""
    spm_file, json_file = model_dir / "tokenizer.model", model_dir / "tokenizer.json"
    if tokenizer_json is None and json_file.is_file():
        tokenizer_json = read_json(json_file, TokenizerError)
    if spm_file.is_file():
        vocab, origin = sentencepiece_vocab(spm_file, vocab_size), "tokenizer.model"
    elif tokenizer_json is not None:
        vocab = tokenizer_json_vocab(json_file, vocab_size, tokenizer_json)
        origin = "tokenizer.json"
    else:
        raise TokenizerError(
            f"{model_dir} has neither tokenizer.model nor tokenizer.json",
            hint="copy the tokenizer files of the original model into the directory",
            path=model_dir,
        )
    # transformers 5 lists added tokens (e.g. <pad>) only in tokenizer.json.
    added = _json_added_tokens(vocab, tokenizer_json) if tokenizer_json is not None else []
    added += [t for t in apply_added_tokens(vocab, model_dir) if t not in added]
    add_space_prefix(writer, model_dir)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(model_dir, n_vocab=len(vocab))
    for kind, adds in template_adds(tokenizer_json).items():
        special.add_special_token.setdefault(kind, adds)
    special.add_to_gguf(writer, quiet=True)
    notes = [f"vocab: {len(vocab)} tokens from {origin}"]
    if added:
        notes.append("added tokens: " + ", ".join(repr(t) for t in added[:8]))
    return notes
