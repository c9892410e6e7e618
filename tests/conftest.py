"""Shared fixtures: isolated environment, tiny models built once per session, llama.cpp guard."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny

CORPUS = tiny.CORPUS


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GGUFKIT_HOME is shared on purpose: it holds the llama.cpp build, made once.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("GGUFKIT_NO_PROGRESS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("GGUFKIT_DEBUG", raising=False)


def _llamacpp_available() -> str | None:
    try:
        from ggufkit.llamacpp.build import current_build

        current_build()
    except Exception as exc:  # any failure means "not built"
        return str(exc)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_llamacpp"):
        problem = _llamacpp_available()
        if problem:
            # In CI the build is part of `make test`: a missing build is a failure, not a skip.
            if os.environ.get("CI"):
                pytest.fail(f"llama.cpp build missing in CI: {problem}")
            pytest.skip(f"llama.cpp not built ({problem}); run `ggufkit build`")


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sentencepiece model for all tiny LLaMAs of the session (training takes seconds)."""
    return tiny.train_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """LLaMA, multi-head attention, untied output, sentencepiece tokenizer."""
    return tiny.make_llama(tmp_path_factory.mktemp("llama-mha"), spm_model=spm_model)


@pytest.fixture(scope="session")
def tiny_llama_gqa_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    return tiny.make_llama(
        tmp_path_factory.mktemp("llama-gqa"), kv_heads=2, spm_model=spm_model, seed=1
    )


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    return tiny.make_llama(
        tmp_path_factory.mktemp("llama-tied"), tie_embeddings=True, spm_model=spm_model, seed=2
    )


@pytest.fixture(scope="session")
def tiny_llama_pad_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """The Vicuna/Chimera situation: a `<pad>` token appended, vocab +1."""
    return tiny.make_llama(
        tmp_path_factory.mktemp("llama-pad"), add_pad=True, spm_model=spm_model, seed=3
    )


@pytest.fixture(scope="session")
def tiny_llama_json_tok_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """Only tokenizer.json, no tokenizer.model."""
    return tiny.make_llama(
        tmp_path_factory.mktemp("llama-json"), tokenizer="json", spm_model=spm_model, seed=4
    )


@pytest.fixture(scope="session")
def tiny_bloom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BLOOM with a locally trained byte-level BPE and an embedding padded past the tokenizer."""
    return tiny.make_bloom(tmp_path_factory.mktemp("bloom"))


@pytest.fixture(scope="session")
def tiny_llama_f16_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_gqa_dir: Path) -> Path:
    """The GQA tiny LLaMA as an f16 GGUF, converted by ggufkit's native converter."""
    from ggufkit.convert import convert

    out = tmp_path_factory.mktemp("gguf") / "tiny-llama-f16.gguf"
    convert(tiny_llama_gqa_dir, out, outtype="f16")
    return out
