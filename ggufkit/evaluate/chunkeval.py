"""Exact per-chunk perplexity, KL-divergence and top-1 agreement, in-process through the bindings.

``llama-perplexity`` prints only running totals rounded to 4 decimals, so per-chunk values cannot
be recovered from its output. This module scores one chunk at a time with llama-cpp-python on
ggufkit's own built libllama, the way llama-perplexity does: the corpus is tokenized once (BOS
added when the vocabulary wants one), cut into ``ctx``-token chunks whose first token is replaced
by BOS, and only the second half of each chunk is scored. llama.cpp runs in a spawned child
(:func:`ggufkit.llamacpp.isolate.run_isolated`); the baseline's per-chunk log-probabilities go to
a content-addressed cache (:mod:`ggufkit.evaluate.chunkcache`), 16 bits each as in
llama-perplexity's base file, so that KLD and top-1 agreement match its numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import EvaluationError
from ggufkit.evaluate.chunkcache import ChunkCache
from ggufkit.evaluate.ppl import quiet_llama_logs
from ggufkit.llamacpp.bindings import load_llama_cpp
from ggufkit.llamacpp.isolate import run_isolated


@dataclass(frozen=True)
class Tokens:
    ids: list[int]
    bos: int | None  # the BOS token when the vocabulary adds one, as llama-perplexity does


@dataclass(frozen=True)
class ChunkJob:
    """One chunk to score: its tokens and the cache keys of its baseline and type results."""

    index: int
    tokens: list[int]
    base_key: str
    type_key: str | None  # None: score the baseline alone


def scored(ctx: int) -> int:
    """Tokens scored per chunk (llama-perplexity's ``n_ctx - 1 - n_ctx / 2``)."""
    return ctx - 1 - ctx // 2


def tokenize(model: Path, corpus: Path) -> Tokens:
    """The corpus as llama-perplexity tokenizes it, in a child process."""
    return run_isolated(_tokenize_here, str(model), str(corpus), what=f"tokenizing {corpus.name}")


def cut(tokens: Tokens, ctx: int) -> list[list[int]]:
    """``len // ctx`` chunks of ``ctx`` tokens; each starts with BOS when the model adds one."""
    chunks = []
    for start in range(0, len(tokens.ids) - ctx + 1, ctx):
        chunk = tokens.ids[start : start + ctx]
        if tokens.bos is not None:
            chunk = [tokens.bos, *chunk[1:]]
        chunks.append(chunk)
    return chunks


def score_chunks(
    model: Path,
    base: Path,
    jobs: Iterator[ChunkJob],
    *,
    ctx: int,
    cache: ChunkCache,
    threads: int | None,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Score ``jobs`` (pulled one at a time, so the caller can stop early) in a child process.

    ``on_result`` gets, per chunk: ``index``, ``base_nll`` and ``nll`` (mean NLL per token),
    ``kld`` (mean per token), ``top1`` (fraction), and the seconds spent on each model.
    """
    run_isolated(
        _score_here,
        str(model),
        str(base),
        what=f"llama.cpp scoring chunks of {model.name}",
        hint="check the file with `ggufkit inspect`; the default eval (no --target-error) "
        "runs llama-perplexity instead",
        on_event=on_result,
        event_kwarg="on_result",
        feed=jobs,
        feed_kwarg="jobs",
        ctx=ctx,
        cache_dir=str(cache.root),
        threads=threads,
    )


# --- in the child --------------------------------------------------------------------------


def _open(model: str, ctx: int, threads: int | None) -> Any:
    llama_cpp = load_llama_cpp()
    quiet_llama_logs()
    kwargs: dict[str, Any] = {"n_ctx": ctx, "n_batch": ctx, "logits_all": True, "verbose": False}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    try:
        return llama_cpp.Llama(model_path=model, **kwargs)
    except ValueError as exc:
        raise EvaluationError(
            f"llama.cpp could not load {model}: {exc}", hint="check it with `ggufkit inspect`"
        ) from exc


def _tokenize_here(model: str, corpus: str) -> Tokens:
    from ggufkit.llamacpp.bindings import vocab_only

    with vocab_only(model) as vocab:  # no context: none is needed to tokenize
        ids = vocab.tokenize(Path(corpus).read_bytes(), add_bos=True, special=False)
        bos = vocab.token_bos()
        return Tokens(ids, bos if ids and ids[0] == bos else None)


def _log_probs(llm: Any, chunk: list[int], ctx: int) -> np.ndarray:
    """Log-softmax (float64) at the scored positions, those that predict the second half."""
    llm.reset()
    llm.eval(chunk)
    first = ctx // 2
    logits = np.asarray(llm.scores[first : ctx - 1], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))


def pack_log_probs(log_probs: np.ndarray) -> dict[str, np.ndarray]:
    """16-bit log-probabilities the way llama-perplexity's ``--kl-divergence-base`` file keeps
    them: per position, codes over ``[max - 16, max]`` with a scale and an offset."""
    top = log_probs.max(axis=1, keepdims=True)
    low = np.maximum(log_probs.min(axis=1, keepdims=True), top - 16)
    scale = (top - low) / 65535
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.where(log_probs > low, np.rint((log_probs - low) / safe), 0)
    return {"codes": codes.astype(np.uint16), "scale": scale[:, 0], "low": low[:, 0]}


def kld_and_top1(packed: dict[str, np.ndarray], log_probs: np.ndarray) -> tuple[float, float]:
    """Mean KL-divergence from the packed baseline and the fraction of positions whose top token
    is the baseline's, computed as llama-perplexity does (baseline terms below e^-16 dropped;
    the baseline's top token is the first of its largest codes)."""
    base = packed["scale"][:, None] * packed["codes"] + packed["low"][:, None]
    terms = np.where(base > -16, np.exp(base) * (base - log_probs), 0.0)
    same = log_probs.argmax(axis=1) == packed["codes"].argmax(axis=1)
    return float(terms.sum(axis=1).mean()), float(same.mean())


def _nll(log_probs: np.ndarray, chunk: list[int], ctx: int) -> float:
    targets = np.asarray(chunk[ctx // 2 + 1 : ctx])
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def _score_here(
    model: str,
    base: str,
    *,
    ctx: int,
    cache_dir: str,
    threads: int | None,
    jobs: Iterator[ChunkJob],
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    cache = ChunkCache(Path(cache_dir))
    opened: dict[str, Any] = {}

    def llm(path: str) -> Any:
        if path not in opened:
            opened[path] = _open(path, ctx, threads)
        return opened[path]

    try:
        for job in jobs:
            started = time.perf_counter()
            baseline = cache.get(job.base_key)
            computed = baseline is None
            if baseline is None:
                log_probs = _log_probs(llm(base), job.tokens, ctx)
                nll = np.float64(_nll(log_probs, job.tokens, ctx))
                baseline = {"nll": nll, **pack_log_probs(log_probs)}
                cache.put(job.base_key, baseline)
            base_seconds = time.perf_counter() - started
            result: dict[str, Any] = {"index": job.index, "base_nll": float(baseline["nll"])}
            if job.type_key is not None:
                started = time.perf_counter()
                log_probs = _log_probs(llm(model), job.tokens, ctx)
                kld, top1 = kld_and_top1(baseline, log_probs)
                values = {
                    "nll": _nll(log_probs, job.tokens, ctx),
                    "kld": kld,
                    "top1": top1,
                    "base_nll": result["base_nll"],
                }
                cache.put(job.type_key, {k: np.float64(v) for k, v in values.items()})
                result.update(values, seconds=time.perf_counter() - started)
            on_result({**result, "base_seconds": base_seconds, "base_computed": computed})
    finally:
        for handle in opened.values():
            handle.close()
