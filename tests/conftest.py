"""Shared fixtures: isolated environment, tiny models built once per session, llama.cpp guard."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
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


# Extras a full `make test` has (`make install`, `make build`). A test that needs one that is
# missing is skipped only when GGUFKIT_ALLOW_MISSING names it (e.g. "torch,bnb,llamacpp,fastchat,ray");
# any other skip is a failure, so that no test vanishes quietly.
EXTRAS = {
    "torch": ("torch", "transformers"),
    "bnb": ("bitsandbytes",),
    "fastchat": ("fastchat",),
    "llamacpp": ("llama_cpp",),
    "ray": ("ray",),
    # Not a package: POSIX signals (SIGKILL, SIGINT to a child) and services such as a Ray
    # cluster. Tests marked posix_only skip by name on Windows, where CI allows "posix".
    "posix": (),
    # Not a package: a GCC or Clang that targets x86-64 (the AMX flags' test asks one).
    "x86cc": (),
}
MARKERS = {
    "needs_torch": "torch",
    "needs_bnb": "bnb",
    "needs_fastchat": "fastchat",
    "needs_ray": "ray",
}
ALLOW_VARIABLE = "GGUFKIT_ALLOW_MISSING"


def allowed_missing() -> set[str]:
    return {x.strip() for x in os.environ.get(ALLOW_VARIABLE, "").split(",") if x.strip()}


def pytest_configure(config: pytest.Config) -> None:
    unknown = allowed_missing() - set(EXTRAS)
    if unknown:
        raise pytest.UsageError(
            f"{ALLOW_VARIABLE} names unknown extras {sorted(unknown)}; known: {sorted(EXTRAS)}"
        )


def _llamacpp_available() -> str | None:
    try:
        from ggufkit.llamacpp.build import current_build

        current_build()
    except Exception as exc:  # any failure means "not built"
        return str(exc)
    return None


def _missing_module(extra: str) -> str | None:
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, extra in MARKERS.items():
        if item.get_closest_marker(marker) and (module := _missing_module(extra)):
            pytest.skip(f"missing extra {extra}: {module} is not installed")
    if item.get_closest_marker("posix_only") and sys.platform == "win32":
        pytest.skip("missing extra posix: this test needs POSIX signals or services")
    if item.get_closest_marker("needs_llamacpp"):
        problem = _llamacpp_available()
        if problem:
            pytest.skip(f"missing extra llamacpp: not built ({problem}); run `ggufkit build`")


def _extra_of(reason: str) -> str | None:
    """Which extra a skip reason blames: only the markers' own ("missing extra X: ..."). Any
    other skip, a failed import included, blames none and so always fails: a broken extra
    must not pass as a missing one."""
    if reason.startswith("missing extra "):
        return reason.removeprefix("missing extra ").split(":", 1)[0]
    return None


def _judge_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if not isinstance(report.longrepr, tuple):
        return
    path, line, reason = report.longrepr
    reason = reason.removeprefix("Skipped: ")
    extra = _extra_of(reason)
    if extra is not None and extra in allowed_missing():
        report.longrepr = (path, line, f"{reason} (allowed by {ALLOW_VARIABLE})")
        return
    report.outcome = "failed"
    allow = f"{ALLOW_VARIABLE}={extra}" if extra else "nothing: fix the cause"
    report.longrepr = f"{path}:{line}: a skip is a failure here: {reason}\n(allowed by {allow})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _judge_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _judge_skip(outcome.get_result())  # type: ignore[attr-defined]


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
