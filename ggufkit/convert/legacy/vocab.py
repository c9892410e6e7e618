"""The tokenizer of a legacy file: from the original checkpoint (``tokenizer``), or rebuilt.

A legacy vocabulary has no merges. LLaMA's GGMF/GGJT files carry sentencepiece pieces with their
scores, which is all llama.cpp's "llama" tokenizer needs, so they are rebuilt the way upstream's
``convert_llama_ggml_to_gguf.py`` does, provided the byte tokens sit where LLaMA's do (ids 3..258).
Unversioned GGML files have no scores, and bloomz.cpp stored ``tokenizer.decode([i])`` (lossy for
partial UTF-8, no merges): those need ``--tokenizer``. A tokenizer given is checked against the
legacy vocabulary, so one of another model is refused rather than written.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from ggufkit.convert.legacy.reader import LegacyFile
from ggufkit.convert.vocab_bpe import build_bpe_vocab, write_bpe_vocab
from ggufkit.convert.vocab_spm import set_llama_vocab
from ggufkit.core.errors import TokenizerError, UsageError
from ggufkit.core.log import get_logger

log = get_logger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "config.json",
)
MAX_MISMATCH = 0.01  # share of comparable entries that may differ (special tokens, padding)


def resolve_tokenizer(ref: str | Path) -> Path:
    """A local directory, or the tokenizer files of a Hub repo id (owner/name)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(
            f"`tokenizer` {ref}: give the directory that holds the tokenizer files, not a file",
            hint=f"use `tokenizer` {path.parent}",
        )
    from ggufkit.hub import download, looks_like_repo_id

    if not looks_like_repo_id(str(ref)):
        raise UsageError(
            f"`tokenizer` {ref}: no such directory, and not a Hub repo id (owner/name)",
            hint="give the original checkpoint's directory or its Hub id",
        )
    return Path(download(str(ref), include=list(TOKENIZER_FILES)).path)


def _need_tokenizer(legacy: LegacyFile, why: str) -> TokenizerError:
    return TokenizerError(
        f"{legacy.path}: {why}, so a GGUF made from it alone would tokenize wrongly; "
        "pass `tokenizer` with the original checkpoint",
        hint="`tokenizer` DIR|REPO_ID: the directory or Hub id of the checkpoint the file was "
        "made from (its tokenizer.json or tokenizer.model)",
        path=legacy.path,
    )


def tokenizer_required(legacy: LegacyFile) -> str | None:
    """Why the file's own vocabulary cannot make an exact tokenizer, or None when it can."""
    if legacy.family == "bloom":
        return "bloomz.cpp stored a lossy vocabulary (decoded text, no BPE merges)"
    if legacy.container == "ggml":
        return "an unversioned GGML file has no token scores"
    items = legacy.vocab
    if len(items) < 259 or any(items[3 + b][0] != bytes([b]) for b in range(256)):
        return "its vocabulary does not hold LLaMA's byte tokens at ids 3..258"
    return None


def require_tokenizer(legacy: LegacyFile, tokenizer_dir: Path | None) -> None:
    """Stop, naming the `tokenizer` parameter, when none is given and the file's vocabulary is not exact."""
    why = tokenizer_required(legacy)
    if tokenizer_dir is None and why is not None:
        raise _need_tokenizer(legacy, why)


def set_legacy_vocab(
    writer: gguf.GGUFWriter,
    legacy: LegacyFile,
    tokenizer_dir: Path | None,
    pre_tokenizer: str | None = None,
) -> list[str]:
    """Write the tokenizer keys; returns notes for the conversion result."""
    n_vocab = legacy.hparams["n_vocab"]
    require_tokenizer(legacy, tokenizer_dir)
    if legacy.family == "bloom" and tokenizer_dir is not None:
        vocab = build_bpe_vocab(tokenizer_dir, vocab_size=n_vocab, pre_tokenizer=pre_tokenizer)
        _check_bloom(legacy, tokenizer_dir)
        write_bpe_vocab(writer, tokenizer_dir, vocab)
        return [f"vocab: {len(vocab.tokens)} tokens from {tokenizer_dir}", *vocab.notes]
    if tokenizer_dir is not None:
        if pre_tokenizer is not None:
            raise UsageError("`pre_tokenizer` applies to BLOOM files, not LLaMA ones")
        _check_llama(legacy, tokenizer_dir)
        notes = set_llama_vocab(writer, tokenizer_dir, n_vocab)
        return [*notes, f"tokenizer from {tokenizer_dir}"]
    _rebuild_llama(writer, legacy)
    return [
        f"vocab: {n_vocab} sentencepiece tokens with scores rebuilt from the "
        f"{legacy.label} file (pass `tokenizer` for added tokens and the chat template)"
    ]


def _rebuild_llama(writer: gguf.GGUFWriter, legacy: LegacyFile) -> None:
    """Tokens, scores and types as upstream rebuilds them: 0..2 <unk>/<s>/</s>, bytes as <0xXX>,
    spaces back to sentencepiece's U+2581, empty entries as control tokens."""
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for token_id, (text, score) in enumerate(legacy.vocab):
        kind = gguf.TokenType.NORMAL
        if token_id <= 2:
            text = (b"<unk>", b"<s>", b"</s>")[token_id]
            kind = gguf.TokenType.UNKNOWN if token_id == 0 else gguf.TokenType.CONTROL
        elif not text:
            kind = gguf.TokenType.CONTROL
        elif token_id <= 258 and len(text) == 1:
            text = f"<0x{text[0]:02X}>".encode()
            kind = gguf.TokenType.BYTE
        else:
            text = text.replace(b" ", "\u2581".encode())
        tokens.append(text)
        scores.append(float(score or 0.0))
        types.append(kind)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def _compare(legacy: LegacyFile, expected: dict[int, bytes], where: Path) -> None:
    comparable = [(i, text) for i, (text, _) in enumerate(legacy.vocab) if i in expected and text]
    wrong = [i for i, text in comparable if expected[i] != text]
    log.debug("tokenizer check: %d of %d entries differ", len(wrong), len(comparable))
    if not comparable or len(wrong) > MAX_MISMATCH * len(comparable):
        shown = ", ".join(f"{i}: {legacy.vocab[i][0]!r} vs {expected[i]!r}" for i in wrong[:3])
        raise TokenizerError(
            f"the tokenizer in {where} does not match {legacy.path}'s vocabulary "
            f"({len(wrong)} of {len(comparable)} entries differ: {shown})",
            hint="give `tokenizer` the checkpoint this file was converted from",
            path=where,
        )


def _check_bloom(legacy: LegacyFile, tokenizer_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    n = min(tokenizer.get_vocab_size(with_added_tokens=True), len(legacy.vocab))
    decoded = tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    # decode([i]) of a partial UTF-8 sequence gives U+FFFD: those entries say nothing
    expected = {i: text.encode("utf-8") for i, text in enumerate(decoded) if "\ufffd" not in text}
    _compare(legacy, expected, tokenizer_dir)


def _check_llama(legacy: LegacyFile, tokenizer_dir: Path) -> None:
    model_file = tokenizer_dir / "tokenizer.model"
    if not model_file.is_file():
        return  # tokenizer.json only: set_llama_vocab checks the size
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(model_file))
    expected = {
        i: processor.IdToPiece(i).replace("\u2581", " ").encode("utf-8")
        for i in range(3, min(processor.vocab_size(), len(legacy.vocab)))
        if not processor.IsByte(i) and not processor.IsControl(i) and not processor.IsUnknown(i)
    }
    _compare(legacy, expected, tokenizer_dir)
