"""Byte-level BPE vocabularies (GPT-2 style) from ``tokenizer.json``, and the pre-tokenizer choice.

llama.cpp does not run the Hugging Face pre-tokenizer: it keeps a fixed set of regex families
compiled into ``llama-vocab.cpp`` and picks one by the ``tokenizer.ggml.pre`` name. Upstream's
converter names it by hashing the ids of a fixed check text and aborts when the hash is unknown,
which is the case for every tokenizer trained locally. Here a known hash still gives upstream's
name, and an unknown one falls back to reading the ``pre_tokenizer`` definition itself and picking
the family whose regexes are the same. Either way the choice and its reason are reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from ggufkit.convert.pre_hashes import KNOWN_HASHES
from ggufkit.convert.vocab_special import UpstreamSpecialVocab
from ggufkit.convert.vocab_spm import check_fits, looks_special
from ggufkit.core.errors import TokenizerError, UsageError
from ggufkit.core.fsutil import read_json
from ggufkit.core.log import get_logger

if TYPE_CHECKING:  # tokenizers loads on first use: a LLaMA conversion never needs it
    from tokenizers import Tokenizer

log = get_logger(__name__)

# Metadata keys that record how tokenizer.ggml.pre was chosen.
KEY_PRE_SOURCE = "ggufkit.tokenizer.pre_source"
KEY_PRE_DETAIL = "ggufkit.tokenizer.pre_detail"

# Upstream's check text (conversion/base.py, get_vocab_base_pre): the sha256 of str(list of ids)
# of its encoding identifies a tokenizer. It must stay byte-for-byte the same for the hashes below.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) "
    "\U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# Every tokenizer.ggml.pre name the pinned llama.cpp accepts (src/llama-vocab.cpp); any other
# name makes it refuse the file, so ``pre_tokenizer`` is checked against this list.
_PRE_NAMES = """
a.x-4.0 afmoe bailingmoe bailingmoe2 bloom chameleon chatglm-bpe codeshell cohere2moe command-r
dbrx deepseek-coder deepseek-llm deepseek-r1-qwen deepseek-v3 default exaone exaone-moe exaone4
f2llmv2 falcon falcon-h1 falcon3 gemma4 gigachat glm4 glm5 gpt-2 gpt-4o gpt3-finnish
granite-docling granite-embed-multi-311m granite-embed-multi-97m grok-2 hunyuan hunyuan-dense
hy_v4 jais jais-2 jina-de jina-es jina-v1-en jina-v2-code jina-v2-de jina-v2-es jina-v5-nano
joyai-llm kanana2 kimi-k2 kormo laguna lfm2 llada-moe llama-bpe llama-v3 llama3 llama4 megrez
mellum mellum2 midm-2.0 minerva-7b minicpm5 minimax-m2 modern-bert mpt olmo phi-2 pixtral
poro-chat qwen2 qwen35 refact roberta-bpe sarvam-moe seed-coder smaug-bpe smollm solar-open
spark2_5 stablelm2 starcoder superbpe talkie tekken tiny_aya trillion ufakzeka viking whitespace
youtu
"""
LLAMA_CPP_PRE_NAMES = frozenset(_PRE_NAMES.split())

# Split regexes as tokenizer.json spells them. ByteLevel(use_regex=True) splits with GPT2.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_GPT2_NO_TAIL = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_BLOOM = " ?[^(\\s|[.,!?…。，、।۔،])]+"
_BLOOM_FLAT = " ?[^(\\s|.,!?…。，、।۔،)]+"  # the same class, as llama.cpp writes it
_LLAMA3_HEAD = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_LLAMA3_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3 = _LLAMA3_HEAD + r"\p{N}{1,3}" + _LLAMA3_TAIL
_QWEN2 = _LLAMA3_HEAD + r"\p{N}" + _LLAMA3_TAIL
_QWEN35 = (  # Qwen2's, with combining marks (\p{M}) kept in words
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGIT = r"\p{N}"
_ALIASES = {_GPT2_NO_TAIL: _GPT2, _BLOOM_FLAT: _BLOOM, r"\d": _DIGIT}

# llama.cpp pre-tokenizer name -> the chain of isolating splits it performs, in order.
REGEX_FAMILIES: dict[str, tuple[str, ...]] = {
    "bloom": (_BLOOM,),
    "gpt-2": (_GPT2,),
    "starcoder": (_DIGIT, _GPT2),
    "llama-bpe": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "gpt-4o": (_GPT4O,),
}

# Normalizers that leave the text llama.cpp sees unchanged in practice (NFC: already-composed
# text is the norm, and upstream maps such tokenizers, e.g. Qwen2, the same way).
_HARMLESS_NORMALIZERS = {"NFC"}


@dataclass(frozen=True)
class PreTokenizerChoice:
    """The ``tokenizer.ggml.pre`` name and how it was found: "hash", "tokenizer.json" or "option"."""

    name: str
    source: str
    detail: str

    def describe(self) -> str:
        return f"pre-tokenizer {self.name!r} ({self.detail})"


@dataclass
class BpeVocab:
    tokens: list[str]
    token_types: list[int]
    pre: PreTokenizerChoice
    n_padding: int = 0
    notes: list[str] = field(default_factory=list)
    # tokenizer.json as parsed once: write_bpe_vocab's special tokens read it from here
    tokenizer_json: dict[str, Any] | None = field(default=None, repr=False)


def load_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "tokenizer.json"
    data = read_json(
        path,
        TokenizerError,
        missing_hint="a byte-level BPE model needs it: copy it from the original checkpoint",
    )
    return check_bpe_json(data, path)


def check_bpe_json(data: Any, path: Path) -> dict[str, Any]:
    """``data`` (tokenizer.json as parsed) when it holds a BPE model; a TokenizerError if not."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        found = model.get("type") if isinstance(model, dict) else None
        raise TokenizerError(f"{path} holds a {found or 'non-BPE'} model, not BPE", path=path)
    return data


def check_text_hash(tokenizer: Tokenizer) -> str:
    """Upstream's identifier of a tokenizer: sha256 over the printed id list of the check text."""
    ids = tokenizer.encode(CHECK_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _split_chain(pre: Any, path: Path) -> tuple[list[str], bool]:
    """The pre-tokenizer as the list of regexes it isolates on, and whether it is byte-level.

    Raises TokenizerError describing the first element llama.cpp has no equivalent for.
    """
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    chain: list[str] = []
    byte_level = False
    for step in steps:
        if not step:
            continue
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise _shape_error(path, "ByteLevel with add_prefix_space=true")
            byte_level = True
            if step.get("use_regex", True):
                chain.append(_GPT2)
        elif kind == "Split":
            pattern = step.get("pattern") or {}
            regex = pattern.get("Regex")
            if regex is None or step.get("invert") or step.get("behavior") != "Isolated":
                raise _shape_error(path, f"Split {json.dumps(step, ensure_ascii=False)}")
            chain.append(_ALIASES.get(regex, regex))
        elif kind == "Digits":
            chain.append(_DIGIT if step.get("individual_digits") else r"\p{N}+")
        else:
            raise _shape_error(path, f"a {kind} pre-tokenizer")
    return chain, byte_level


def _shape_error(path: Path, what: str) -> TokenizerError:
    families = ", ".join(REGEX_FAMILIES)
    return TokenizerError(
        f"{path}: cannot tell which llama.cpp pre-tokenizer matches {what}",
        hint=f"name one with `pre_tokenizer` NAME (regex families ggufkit recognises: {families}; "
        "any name from llama.cpp's src/llama-vocab.cpp is accepted)",
        path=path,
    )


def detect_pre_tokenizer(
    tokenizer_json: dict[str, Any],
    *,
    path: Path,
    check_hash: str | None = None,
    override: str | None = None,
) -> PreTokenizerChoice:
    """Choose ``tokenizer.ggml.pre``: the option, else a known hash, else the regex family."""
    if override:
        if override not in LLAMA_CPP_PRE_NAMES:
            raise UsageError(
                f"`pre_tokenizer` {override!r} is not a pre-tokenizer llama.cpp knows",
                hint="choose one of: " + ", ".join(sorted(LLAMA_CPP_PRE_NAMES)),
            )
        # the detail is written into the file (KEY_PRE_DETAIL) as it always was
        return PreTokenizerChoice(override, "option", "named with --pre-tokenizer")
    if check_hash and check_hash in KNOWN_HASHES:
        name = KNOWN_HASHES[check_hash]
        return PreTokenizerChoice(name, "hash", f"check-text hash {check_hash[:12]} is known")
    chain, byte_level = _split_chain(tokenizer_json.get("pre_tokenizer"), path)
    if not byte_level and (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise TokenizerError(
            f"{path}: the BPE tokenizer is not byte-level (no ByteLevel pre-tokenizer or decoder)",
            hint="only GPT-2-style byte-level BPE is supported for this architecture",
            path=path,
        )
    normalizer = tokenizer_json.get("normalizer")
    steps = (
        normalizer.get("normalizers", [])
        if normalizer and normalizer.get("type") == "Sequence"
        else [normalizer]
    )
    for step in steps:
        if step and step.get("type") not in _HARMLESS_NORMALIZERS:
            raise _shape_error(path, f"a {step.get('type')} normalizer (llama.cpp applies none)")
    for name, family in REGEX_FAMILIES.items():
        if tuple(chain) == family:
            unknown = f"hash {check_hash[:12]} unknown; " if check_hash else ""
            return PreTokenizerChoice(
                name, "tokenizer.json", f"{unknown}tokenizer.json splits like llama.cpp's {name!r}"
            )
    shown = " then ".join(repr(regex) for regex in chain) or "no split at all"
    raise _shape_error(path, f"the split {shown}")


def _id_to_token(tokenizer_json: dict[str, Any], path: Path) -> dict[int, str]:
    vocab = tokenizer_json["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{path}: model.vocab is not a mapping", path=path)
    id_to_token = {int(i): str(t) for t, i in vocab.items()}
    for added in tokenizer_json.get("added_tokens") or []:
        id_to_token[int(added["id"])] = str(added["content"])
    return id_to_token


def build_bpe_vocab(
    model_dir: Path,
    *,
    vocab_size: int | None = None,
    pre_tokenizer: str | None = None,
    tokenizer_json: dict[str, Any] | None = None,
) -> BpeVocab:
    """Token strings and types, padded with ``[PAD{id}]`` (UNUSED) up to ``vocab_size``.

    Matches upstream's token list: added tokens flagged special (or looking special) are CONTROL,
    other added tokens USER_DEFINED, ids the tokenizer lacks become UNUSED placeholders so the
    token count equals the embedding's rows. ``tokenizer_json``: the file as the caller parsed it
    (read here otherwise); it travels on in the result to ``write_bpe_vocab``.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if tokenizer_json is None:
        data = load_tokenizer_json(model_dir)
    else:
        data = check_bpe_json(tokenizer_json, path)
    id_to_token = _id_to_token(data, path)
    size = check_fits(path, max(id_to_token) + 1 if id_to_token else 0, vocab_size)
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions
        raise TokenizerError(
            f"the tokenizers library cannot load {path}: {exc}", path=path
        ) from exc
    check_hash = None if pre_tokenizer else check_text_hash(tokenizer)
    pre = detect_pre_tokenizer(data, path=path, check_hash=check_hash, override=pre_tokenizer)
    added = {int(a["id"]): a for a in data.get("added_tokens") or []}

    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(size):
        text = id_to_token.get(token_id)
        if text is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        entry = added.get(token_id)
        if entry is None:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
            continue
        if not entry.get("normalized", True):
            # llama.cpp matches added tokens on raw text, so store them as the tokenizer
            # reproduces them, not as spelled.
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            decoded = tokenizer.decode(ids, skip_special_tokens=False)
            if decoded != text:
                log.info(
                    "added token %r is stored as %r (its encode/decode round trip)", text, decoded
                )
                text = decoded
        if entry.get("special") or looks_special(text):
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
            text = text.replace("\u2581", " ")
        tokens.append(text)

    vocab = BpeVocab(tokens, types, pre, n_padding=size - len(id_to_token), tokenizer_json=data)
    vocab.notes.append(pre.describe())
    if vocab.n_padding:
        vocab.notes.append(
            f"vocab padded from {len(id_to_token)} tokenizer tokens to {size} rows "
            f"with {vocab.n_padding} unused [PAD<id>] entries"
        )
    log.info("tokenizer: %s", pre.describe())
    return vocab


def write_bpe_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab: BpeVocab) -> None:
    """Tokenizer keys for llama.cpp's BPE ("gpt2") tokenizer, plus merges and special ids."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre.name)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    special = UpstreamSpecialVocab(
        Path(model_dir),
        load_merges=True,
        n_vocab=len(vocab.tokens),
        tokenizer_json=vocab.tokenizer_json,
    )
    if not special.merges:
        raise TokenizerError(
            f"{Path(model_dir) / 'tokenizer.json'} has no merges; llama.cpp's BPE needs them",
            hint="use the checkpoint's original tokenizer.json",
            path=Path(model_dir) / "tokenizer.json",
        )
    special.add_to_gguf(writer, quiet=True)
    writer.add_string(KEY_PRE_SOURCE, vocab.pre.source)
    writer.add_string(KEY_PRE_DETAIL, vocab.pre.detail)
