"""Byte-level BPE vocab and pre-tokenizer detection, on tokenizer.json variants (no llama.cpp)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import gguf
import pytest
import tiny
from tokenizer_training import BLOOM_SPLIT_REGEX, train_byte_bpe
from tokenizers import Tokenizer

from ggufkit.convert import vocab_bpe
from ggufkit.convert.vocab_bpe import (
    KNOWN_HASHES,
    LLAMA_CPP_PRE_NAMES,
    build_bpe_vocab,
    check_text_hash,
    detect_pre_tokenizer,
    load_tokenizer_json,
)
from ggufkit.core.errors import TokenizerError, UsageError

PATH = Path("tokenizer.json")
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_level(use_regex: bool = False, add_prefix_space: bool = False) -> dict[str, Any]:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def spec(*steps: dict[str, Any], normalizer: Any = None) -> dict[str, Any]:
    pre = steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": list(steps)}
    return {
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "decoder": byte_level(True),
        "model": {"type": "BPE"},
    }


@pytest.mark.parametrize(
    ("tokenizer_json", "expected"),
    [
        (spec(split(BLOOM_SPLIT_REGEX), byte_level()), "bloom"),
        # the same character class as llama.cpp spells it
        (spec(split(" ?[^(\\s|.,!?…。，、।۔،)]+"), byte_level()), "bloom"),
        (spec(byte_level(use_regex=True)), "gpt-2"),
        (spec(split(GPT2), byte_level()), "gpt-2"),
        (
            spec({"type": "Digits", "individual_digits": True}, byte_level(use_regex=True)),
            "starcoder",
        ),
        (spec(split(LLAMA3), byte_level()), "llama-bpe"),
        (
            spec(
                split(LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")),
                byte_level(),
                normalizer={"type": "NFC"},
            ),
            "qwen2",
        ),
    ],
)
def test_regex_family_detected_from_tokenizer_json(
    tokenizer_json: dict[str, Any], expected: str
) -> None:
    choice = detect_pre_tokenizer(tokenizer_json, path=PATH, check_hash="ab" * 32)
    assert choice.name == expected
    assert choice.source == "tokenizer.json"
    assert "unknown" in choice.detail and expected in choice.describe()


def test_known_hash_wins_over_structure() -> None:
    bloom_hash = next(h for h, name in KNOWN_HASHES.items() if name == "bloom")
    # even a shape the structural rules reject: the hash is upstream's own identification
    weird = spec({"type": "Metaspace"})
    choice = detect_pre_tokenizer(weird, path=PATH, check_hash=bloom_hash)
    assert (choice.name, choice.source) == ("bloom", "hash")


def test_option_overrides_detection() -> None:
    choice = detect_pre_tokenizer(spec({"type": "Metaspace"}), path=PATH, override="gpt-2")
    assert (choice.name, choice.source) == ("gpt-2", "option")


def test_unknown_option_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a pre-tokenizer llama.cpp knows") as info:
        detect_pre_tokenizer(spec(byte_level(True)), path=PATH, override="bloomz")
    assert info.value.hint and "bloom" in info.value.hint


@pytest.mark.parametrize(
    ("tokenizer_json", "what"),
    [
        (spec(byte_level(use_regex=True, add_prefix_space=True)), "add_prefix_space"),
        (spec({"type": "Metaspace", "replacement": "▁"}, byte_level()), "Metaspace"),
        (spec(split(r"\w+|[^\w\s]+"), byte_level()), "the split"),
        (spec(byte_level(True), normalizer={"type": "Lowercase"}), "Lowercase normalizer"),
        (
            spec(
                {
                    "type": "Split",
                    "pattern": {"String": " "},
                    "behavior": "Removed",
                    "invert": False,
                },
                byte_level(),
            ),
            "Split",
        ),
        (spec(split(GPT2), byte_level(), split(r"\p{N}")), "the split"),
    ],
)
def test_unrecognised_shapes_ask_for_the_option(tokenizer_json: dict[str, Any], what: str) -> None:
    with pytest.raises(TokenizerError, match=re.escape(what)) as info:
        detect_pre_tokenizer(tokenizer_json, path=PATH, check_hash="cd" * 32)
    assert info.value.hint and "`pre_tokenizer` NAME" in info.value.hint


def test_bpe_without_byte_level_is_refused() -> None:
    tokenizer_json = spec(split(GPT2))
    tokenizer_json["decoder"] = {"type": "Metaspace"}
    with pytest.raises(TokenizerError, match="not byte-level"):
        detect_pre_tokenizer(tokenizer_json, path=PATH)


def test_load_tokenizer_json_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="missing"):
        load_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}))
    with pytest.raises(TokenizerError, match="WordPiece model, not BPE"):
        load_tokenizer_json(tmp_path)
    # JSON that looks right but that the tokenizers library rejects
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}})
    )
    with pytest.raises(TokenizerError, match="cannot load"):
        build_bpe_vocab(tmp_path)


# --- vocab building on a tokenizer trained here ---------------------------------------------


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BLOOM-style byte-level BPE plus one non-special and one chat-style added token."""
    from tokenizers import AddedToken

    out = tmp_path_factory.mktemp("bpe")
    tokenizer = _train(out)
    tokenizer.add_tokens([AddedToken("hello▁world", special=False, normalized=False)])
    tokenizer.add_tokens([AddedToken("<|im_start|>", special=False, normalized=False)])
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def _train(out: Path, vocab_size: int = 300) -> Any:
    return train_byte_bpe(vocab_size, files=[tiny.CORPUS])


def test_vocab_types_and_padding(bpe_dir: Path) -> None:
    data = json.loads((bpe_dir / "tokenizer.json").read_text(encoding="utf-8"))
    n_tokens = len(data["model"]["vocab"]) + 2
    vocab = build_bpe_vocab(bpe_dir, vocab_size=n_tokens + 5)

    assert len(vocab.tokens) == len(vocab.token_types) == n_tokens + 5
    assert vocab.pre.name == "bloom" and vocab.pre.source == "tokenizer.json"
    assert vocab.tokens[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert vocab.token_types[:4] == [gguf.TokenType.CONTROL] * 4
    # a plain added token is user-defined, with sentencepiece's space marker as a real space
    assert vocab.tokens[n_tokens - 2] == "hello world"
    assert vocab.token_types[n_tokens - 2] == gguf.TokenType.USER_DEFINED
    # not flagged special, but chat markers are control tokens for llama.cpp
    assert vocab.tokens[n_tokens - 1] == "<|im_start|>"
    assert vocab.token_types[n_tokens - 1] == gguf.TokenType.CONTROL
    # ids past the tokenizer are placeholders named like upstream's
    assert vocab.tokens[n_tokens:] == [f"[PAD{i}]" for i in range(n_tokens, n_tokens + 5)]
    assert set(vocab.token_types[n_tokens:]) == {gguf.TokenType.UNUSED}
    assert set(vocab.token_types[4 : n_tokens - 2]) == {gguf.TokenType.NORMAL}
    assert vocab.n_padding == 5
    assert any("padded" in note and str(n_tokens + 5) in note for note in vocab.notes)


def test_vocab_without_padding_and_override(bpe_dir: Path) -> None:
    vocab = build_bpe_vocab(bpe_dir, pre_tokenizer="gpt-2")
    assert vocab.n_padding == 0 and not any("padded" in note for note in vocab.notes)
    assert (vocab.pre.name, vocab.pre.source) == ("gpt-2", "option")


def test_tokenizer_larger_than_the_model_is_refused(bpe_dir: Path) -> None:
    with pytest.raises(TokenizerError, match="vocab_size is 100"):
        build_bpe_vocab(bpe_dir, vocab_size=100)


@pytest.mark.needs_torch
def test_check_hash_matches_transformers_encoding(bpe_dir: Path) -> None:
    """Upstream hashes AutoTokenizer(...).encode(check text); ours uses tokenizers directly."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(bpe_dir / "tokenizer.json"))
    ids = fast.encode(vocab_bpe.CHECK_TEXT)
    ours = check_text_hash(Tokenizer.from_file(str(bpe_dir / "tokenizer.json")))
    assert ours == hashlib.sha256(str(ids).encode()).hexdigest()


# --- the tables stay in step with the pinned llama.cpp -------------------------------------


@pytest.fixture(scope="module")
def pinned_source() -> Path:
    """The pinned llama.cpp source, unpacked from the sdist `ggufkit build` fetched."""
    from ggufkit.llamacpp.source import ensure_source

    return ensure_source()


@pytest.mark.needs_llamacpp
def test_check_text_and_hashes_match_the_pinned_upstream(pinned_source: Path) -> None:
    source = (pinned_source / "conversion" / "base.py").read_text(encoding="utf-8")
    literal = re.search(r"chktxt = ('.*')\n", source)
    assert literal is not None
    assert ast.literal_eval(literal.group(1)) == vocab_bpe.CHECK_TEXT
    upstream = dict(
        re.findall(r'chkhsh == "([0-9a-f]{64})":\n(?:\s*#.*\n)*\s*res = "([^"]+)"', source)
    )
    # All of upstream's, less those llama.cpp's BPE vocabulary does not accept (BERT-style).
    assert {h: n for h, n in upstream.items() if n in LLAMA_CPP_PRE_NAMES} == KNOWN_HASHES
    assert {"llama-bpe", "smollm", "gpt-2", "bloom"} <= set(KNOWN_HASHES.values())


@pytest.mark.needs_llamacpp
def test_pre_names_match_the_pinned_llama_cpp(pinned_source: Path) -> None:
    source = (pinned_source / "src" / "llama-vocab.cpp").read_text(encoding="utf-8")
    names = set(re.findall(r'tokenizer_pre == "([^"]+)"', source))
    assert names == LLAMA_CPP_PRE_NAMES
    assert set(KNOWN_HASHES.values()) <= names
    assert set(vocab_bpe.REGEX_FAMILIES) <= names
