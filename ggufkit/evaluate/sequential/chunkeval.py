"""Exact per-chunk perplexity, KL-divergence and top-1 agreement, in-process through the bindings.

``llama-perplexity`` prints only running totals rounded to 4 decimals, so per-chunk values cannot
be recovered from its output. This module scores chunks with llama-cpp-python's low-level API on
ggufkit's own built libllama, the way llama-perplexity does: the corpus is tokenized once (BOS
added when the vocabulary wants one), cut into ``ctx``-token chunks whose first token is replaced
by BOS, only the second half of each chunk is scored, and as many chunks as one batch of
llama-perplexity holds are decoded together (:mod:`ggufkit.evaluate.sequential.batchscore`,
which also copies its threads and flash-attention setting). llama.cpp runs in a spawned child
(:func:`ggufkit.llamacpp.isolate.run_isolated`); the baseline's per-chunk log-probabilities go to
a content-addressed cache (:mod:`ggufkit.evaluate.sequential.chunkcache`), 16 bits each as in
llama-perplexity's base file, so that KLD and top-1 agreement match its numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.evaluate.ppl import quiet_llama_logs
from ggufkit.evaluate.sequential.batchscore import (
    ChunkScorer,
    base_record,
    seqs_per_batch,
    type_values,
)
from ggufkit.evaluate.sequential.chunkcache import ChunkCache
from ggufkit.llamacpp.isolate import run_isolated


@dataclass(frozen=True)
class Tokens:
    ids: list[int]
    bos: int | None  # the BOS token when the vocabulary adds one, as llama-perplexity does


@dataclass(frozen=True)
class ChunkJob:
    """One chunk to score: its tokens, the cache keys of its baseline and type results, and the
    type's file."""

    index: int
    tokens: list[int]
    base_key: str
    type_key: str | None  # None: score the baseline alone
    model: str | None = None


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
    base: Path,
    jobs: Iterator[ChunkJob | None],
    *,
    ctx: int,
    cache: ChunkCache,
    threads: int | None,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """Score ``jobs`` in one child process, a batch of :func:`seqs_per_batch` chunks of one type
    at a time (pulled one at a time, so the caller can stop early; a None ends a batch early).

    ``on_result`` gets, per chunk: ``index``, ``model``, ``base_nll`` and ``nll`` (mean NLL per
    token), ``kld`` (mean per token), ``top1`` (fraction), and the seconds spent on each model.
    """
    run_isolated(
        _score_here,
        str(base),
        what=f"llama.cpp scoring chunks against {base.name}",
        hint="check the files with `ggufkit inspect`; the default eval (no --target-error) "
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


def _tokenize_here(model: str, corpus: str) -> Tokens:
    from ggufkit.llamacpp.bindings import vocab_only

    with vocab_only(model) as vocab:  # no context: none is needed to tokenize
        ids = vocab.tokenize(Path(corpus).read_bytes(), add_bos=True, special=False)
        bos = vocab.token_bos()
        return Tokens(ids, bos if ids and ids[0] == bos else None)


def targets(chunk: list[int], ctx: int) -> np.ndarray:
    """The scored tokens of a chunk: positions ``ctx/2 + 1 .. ctx - 1``."""
    return np.asarray(chunk[ctx // 2 + 1 : ctx], dtype=np.int64)


def _groups(jobs: Iterator[ChunkJob | None], size: int) -> Iterator[list[ChunkJob]]:
    """Up to ``size`` jobs at a time (the chunks one llama-perplexity batch holds); a None from
    the feed ends a group early."""
    group: list[ChunkJob] = []
    for job in jobs:
        if group and (job is None or job.model != group[0].model):
            yield group  # the feed ended the batch, or the next type begins
            group = []
        if job is not None:
            group.append(job)
            if len(group) == size:
                yield group
                group = []
    if group:
        yield group


def _score_here(
    base: str,
    *,
    ctx: int,
    cache_dir: str,
    threads: int | None,
    jobs: Iterator[ChunkJob | None],
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    quiet_llama_logs()
    cache = ChunkCache(Path(cache_dir))
    opened: dict[str, ChunkScorer] = {}

    def scorer(path: str) -> ChunkScorer:
        if path not in opened:
            opened[path] = ChunkScorer(path, ctx, threads)
        return opened[path]

    try:
        for group in _groups(jobs, seqs_per_batch(ctx)):
            _score_group(group, scorer, base, ctx, cache, on_result)
    finally:
        for handle in opened.values():
            handle.close()


def _score_group(
    group: list[ChunkJob],
    scorer: Callable[[str], ChunkScorer],
    base: str,
    ctx: int,
    cache: ChunkCache,
    on_result: Callable[[dict[str, Any]], None],
) -> None:
    """One batch of chunks through the baseline (those not cached) and one through the type."""
    started = time.perf_counter()
    bases: dict[int, dict[str, Any]] = {}
    missing = []
    for job in group:
        cached = cache.get(job.base_key)
        if cached is None:
            missing.append(job)
        else:
            bases[job.index] = cached
    if missing:
        logits = scorer(base).logits([job.tokens for job in missing])
        for job, rows in zip(missing, logits, strict=True):
            bases[job.index] = base_record(rows, targets(job.tokens, ctx))
            cache.put(job.base_key, bases[job.index])
    base_seconds = (time.perf_counter() - started) / max(1, len(missing))
    computed = {job.index for job in missing}
    typed = [(job, job.type_key) for job in group if job.type_key is not None]
    values: dict[int, dict[str, float]] = {}
    started = time.perf_counter()
    if typed:
        model = group[0].model
        assert model is not None, "a type's chunk names its model"
        logits = scorer(model).logits([job.tokens for job, _ in typed])
        for (job, key), rows in zip(typed, logits, strict=True):
            found = type_values(rows, targets(job.tokens, ctx), bases[job.index])
            found["base_nll"] = float(bases[job.index]["nll"])
            cache.put(key, {k: np.float64(v) for k, v in found.items()})
            values[job.index] = found
    seconds = (time.perf_counter() - started) / max(1, len(typed))
    for job in group:
        result: dict[str, Any] = {
            "index": job.index,
            "model": job.model,
            "base_nll": float(bases[job.index]["nll"]),
        }
        if job.index in values:
            result.update(values[job.index], seconds=seconds)
        on_result({**result, "base_seconds": base_seconds, "base_computed": job.index in computed})
