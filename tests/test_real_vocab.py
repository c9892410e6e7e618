"""A LLaMA checkpoint with a real byte-level BPE tokenizer (Llama 3's), converted by default.

The tokenizer is rebuilt from the pinned llama.cpp's ``ggml-vocab-llama-bpe.gguf`` and checked
against the ids the original tokenizer gave (``.inp``/``.out``): the oracles are the published
tokenizer's answers and the pinned upstream converter's bytes, not ggufkit's expectations.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import real_vocab
import tiny

from ggufkit.convert import convert

# Provenance and naming keys differ by design; everything a llama.cpp loader reads must not.
OWN_KEYS = ("general.", "ggufkit.")


@pytest.fixture(scope="module")
def llama3_vocab() -> Path:
    from ggufkit.llamacpp.source import ensure_source

    return real_vocab.vocab_file(ensure_source(), "llama-bpe")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory, llama3_vocab: Path) -> Path:
    return real_vocab.make_llama3(tmp_path_factory.mktemp("llama3"), llama3_vocab)


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory: pytest.TempPathFactory, llama3_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("llama3-gguf") / "llama3-f16.gguf"
    result = convert(llama3_dir, out)  # the default engine
    assert result.engine == "native", result.notes
    return result.output


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith(OWN_KEYS) and not name.startswith("GGUF.")
    }


@pytest.mark.needs_torch
def test_rebuilt_tokenizer_is_the_published_one(llama3_dir: Path, llama3_vocab: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    pairs = real_vocab.reference_pairs(llama3_vocab)
    assert len(pairs) > 40
    wrong = [t for t, ids in pairs if tokenizer.encode(t, add_special_tokens=False).ids != ids]
    assert wrong == []


@pytest.mark.slow
@pytest.mark.needs_torch
def test_identical_to_upstream(llama3_dir: Path, llama3_gguf: Path, tmp_path: Path) -> None:
    theirs = tiny.upstream_convert(llama3_dir, tmp_path / "upstream.gguf")
    ours_fields, their_fields = _fields(llama3_gguf), _fields(theirs)
    assert ours_fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert sorted(ours_fields) == sorted(their_fields)
    differ = [key for key in their_fields if ours_fields[key] != their_fields[key]]
    assert differ == []
    ours_t, theirs_t = gguf.GGUFReader(llama3_gguf).tensors, gguf.GGUFReader(theirs).tensors
    assert [t.name for t in ours_t] == [t.name for t in theirs_t]
    for a, b in zip(ours_t, theirs_t, strict=True):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name


def _llamacpp_ids(model: str, texts: list[str]) -> list[list[int]]:
    from ggufkit.inference.parity import open_gguf

    with open_gguf(model, vocab_only=True) as llm:
        return [
            [int(i) for i in llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)]
            for t in texts
        ]


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_llamacpp_tokenizes_as_the_published_tokenizer(
    llama3_gguf: Path, llama3_vocab: Path
) -> None:
    from ggufkit.llamacpp.isolate import run_isolated

    pairs = real_vocab.reference_pairs(llama3_vocab)
    got = run_isolated(_llamacpp_ids, str(llama3_gguf), [t for t, _ in pairs], what="tokenizing")
    wrong = [text for (text, ids), ours in zip(pairs, got, strict=True) if ours != ids]
    assert wrong == []


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_verify_passes(llama3_gguf: Path, llama3_dir: Path) -> None:
    from ggufkit.inference.parity import logit_parity, tokenizer_parity

    ids = [int(i) for i in np.random.default_rng(3).integers(0, 128000, 96)]
    report = logit_parity(llama3_gguf, llama3_dir, ids)
    assert report.rel_diff <= 0.005 and report.argmax_agreement == 1.0, report.summary()
    text = "<|begin_of_text|>Hello, world! 1234567 naïve café 🦙\n\tindent<|eot_id|>"
    tokens = tokenizer_parity(llama3_gguf, llama3_dir, text)
    assert tokens.equal, tokens.summary()
