"""``eval --target-error``: paired, early-stopped evaluation against the baseline.

The corpus is tokenized once and cut into chunks, which are scored in one seeded random order,
the same for every type. Each type stops once all of its paired 95 % intervals (ΔPPL relative
to the baseline's perplexity, KLD, top-1 agreement) are within the target, after at least
``min_chunks`` chunks, or when the corpus runs out; the rule is checked after each batch of
chunks the scorer decodes together (llama-perplexity's ``n_batch / ctx``). The baseline is
scored on the chunks that some type needed, once, through the per-chunk cache; every type goes
through one scorer process, which loads the baseline once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import sha256_file
from ggufkit.core.log import get_logger
from ggufkit.evaluate.results import ModelResult
from ggufkit.evaluate.sequential import chunkeval
from ggufkit.evaluate.sequential.batchscore import seqs_per_batch
from ggufkit.evaluate.sequential.chunkcache import ChunkCache, chunk_key
from ggufkit.evaluate.sequential.intervals import (
    DEFAULT_MIN_CHUNKS,
    ChunkValues,
    PairedStats,
    chunk_order,
    ppl_interval,
    should_stop,
)
from ggufkit.llamacpp.attention_probe import flash_attn_used

log = get_logger("evaluate.sequential")


@dataclass
class TypeRun:
    """The chunks one type was scored on, in order, and the time spent on them."""

    tokens: int  # scored a chunk
    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    computed: int = 0  # chunks scored now (the rest came from the cache)
    base_seconds: float = 0.0
    base_computed: int = 0

    def column(self, name: str) -> np.ndarray:
        return np.asarray([row[name] for row in self.rows], dtype=np.float64)

    def values(self) -> ChunkValues:
        return ChunkValues(
            nll=self.column("nll"),
            base_nll=self.column("base_nll"),
            kld=self.column("kld"),
            top1=self.column("top1"),
            tokens=self.tokens,
        )

    def stats(self) -> PairedStats:
        return self.values().stats()


@dataclass
class SequentialRun:
    """What :func:`run_sequential` measured, for the report."""

    corpus_chunks: int
    ctx: int
    base_chunks: int
    runs: dict[Path, TypeRun]
    seconds: float
    seconds_saved: float | None
    tokens_scored: int  # chunks x ctx for every model, the baseline included
    tokens_full: int  # the same for the whole corpus
    cache_hits: int


def run_sequential(
    base: Path,
    models: Sequence[Path],
    corpus: Path,
    *,
    ctx: int,
    target: float,
    min_chunks: int = DEFAULT_MIN_CHUNKS,
    seed: int = 0,
    max_chunks: int | None = None,
    threads: int | None = None,
    cache: ChunkCache | None = None,
) -> SequentialRun:
    """Score ``models`` against ``base`` on chunks of ``corpus`` until ``target`` is met."""
    if not 0 < target < 1:
        raise UsageError(f"--target-error must be between 0 and 100%, not {target:.4g}")
    if not models:
        raise UsageError(
            "--target-error compares types with the baseline: give at least one more model",
            hint="e.g. ggufkit eval model-f16.gguf model-Q4_0.gguf --target-error 1%",
        )
    cache = cache or ChunkCache()
    started = time.perf_counter()
    chunks = chunkeval.cut(chunkeval.tokenize(base, corpus), ctx)[:max_chunks]
    if len(chunks) < 2:
        raise UsageError(
            f"{corpus} holds {len(chunks)} chunk(s) of {ctx} tokens; intervals need 2 or more",
            hint="give a longer --corpus or a smaller --ctx",
        )
    order = chunk_order(len(chunks), seed)
    base_sha = sha256_file(base)
    # Flash attention changes the numbers: the kernel really used, never "auto" (attention_probe);
    # "v2": the batched scorer's float32 log-softmax.
    setting = f"fa={flash_attn_used(base)}/v2"
    base_keys = [chunk_key("base", base_sha, str(ctx), setting, tokens=c) for c in chunks]
    runs: dict[Path, TypeRun] = {}
    keys: dict[Path, list[str]] = {}
    for model in models:
        model_sha = sha256_file(model)
        runs[model] = TypeRun(chunkeval.scored(ctx))
        keys[model] = [
            chunk_key("type", model_sha, base_sha, str(ctx), setting, tokens=c) for c in chunks
        ]
    plan = _Plan(chunks, order, base_keys, ctx, cache, target, min_chunks)
    chunkeval.score_chunks(
        base,
        _all_jobs(plan, runs, keys),
        ctx=ctx,
        cache=cache,
        threads=threads,
        on_result=lambda result: _record(runs[Path(result["model"])], result),
    )
    for model, run in runs.items():
        stats = run.stats()
        log.info(
            "%s: %d of %d chunks, ΔPPL %+.4g ± %.2g, KLD %.4g ± %.2g",
            model.name,
            stats.chunks,
            len(chunks),
            stats.delta_ppl.value,
            stats.delta_ppl.half,
            stats.kld.value,
            stats.kld.half,
        )
    cache.trim()
    base_chunks = max(len(r.rows) for r in runs.values())
    seconds = time.perf_counter() - started
    return SequentialRun(
        corpus_chunks=len(chunks),
        ctx=ctx,
        base_chunks=base_chunks,
        runs=runs,
        seconds=seconds,
        seconds_saved=_saved(runs, len(chunks), base_chunks),
        tokens_scored=ctx * (base_chunks + sum(len(r.rows) for r in runs.values())),
        tokens_full=ctx * len(chunks) * (1 + len(runs)),
        cache_hits=cache.hits,
    )


@dataclass(frozen=True)
class _Plan:
    chunks: list[list[int]]
    order: np.ndarray
    base_keys: list[str]
    ctx: int
    cache: ChunkCache
    target: float
    min_chunks: int


def _all_jobs(
    plan: _Plan, runs: dict[Path, TypeRun], keys: dict[Path, list[str]]
) -> Iterator[chunkeval.ChunkJob | None]:
    """Every type's chunks, one type after the other, through one scorer (one child process,
    the baseline loaded once)."""
    for model, run in runs.items():
        yield from _type_jobs(plan, model, run, keys[model])
        yield None  # the type's last batch ends here


def _type_jobs(
    plan: _Plan, model: Path, run: TypeRun, keys: list[str]
) -> Iterator[chunkeval.ChunkJob | None]:
    """One type's chunks in the shared order until its intervals meet the target. The rule is
    checked every batch of the scorer, never in between: a run served from the cache stops
    where a fresh one did."""
    block = seqs_per_batch(plan.ctx)
    for n, index in enumerate(map(int, plan.order)):
        if n % block == 0:
            if n:
                yield None  # the end of a batch: the scorer reports before the next pull
            if len(run.rows) >= 2 and should_stop(run.stats(), plan.target, plan.min_chunks):
                return
        cached = plan.cache.get(keys[index])
        if cached is not None:
            run.rows.append({name: float(value) for name, value in cached.items()})
            continue
        chunk = plan.chunks[index]
        yield chunkeval.ChunkJob(index, chunk, plan.base_keys[index], keys[index], str(model))


def _record(run: TypeRun, result: dict[str, Any]) -> None:
    run.rows.append({n: result[n] for n in ("nll", "base_nll", "kld", "top1")})
    run.seconds += result["seconds"]
    run.computed += 1
    if result["base_computed"]:
        run.base_seconds += result["base_seconds"]
        run.base_computed += 1


def _saved(runs: dict[Path, TypeRun], n_chunks: int, base_chunks: int) -> float | None:
    """Seconds the full corpus would have taken beyond this run, at the measured per-chunk times."""
    base_done = sum(r.base_computed for r in runs.values())
    if base_done == 0 or any(r.computed == 0 for r in runs.values()):
        return None  # served from the cache: no time per chunk was measured
    per_base = sum(r.base_seconds for r in runs.values()) / base_done
    saved = (n_chunks - base_chunks) * per_base
    for run in runs.values():
        saved += (n_chunks - len(run.rows)) * run.seconds / run.computed
    return saved


def fill_results(results: Sequence[ModelResult], run: SequentialRun) -> None:
    """Put the paired statistics and their 95 % half-widths into the report's rows."""
    longest = max(run.runs.values(), key=lambda r: len(r.rows))
    for result in results:
        if result.is_baseline:
            nll = longest.column("base_nll")
            ppl = ppl_interval(nll)
            result.ppl, result.ppl_ci, result.chunks = ppl.value, ppl.half, len(nll)
            done = sum(r.base_computed for r in run.runs.values())
            seconds = sum(r.base_seconds for r in run.runs.values())
            result.eval_seconds = seconds
            if done:
                result.eval_seconds_saved = (run.corpus_chunks - len(nll)) * seconds / done
            continue
        type_run = run.runs[Path(result.path)]
        stats = type_run.stats()
        result.chunks = stats.chunks
        result.ppl, result.ppl_ci = stats.ppl.value, stats.ppl.half
        result.delta_ppl, result.delta_ppl_ci = stats.delta_ppl.value, stats.delta_ppl.half
        result.kld_mean, result.kld_ci = stats.kld.value, stats.kld.half
        result.top1_agreement, result.top1_ci = stats.top1.value, stats.top1.half
        result.eval_seconds = type_run.seconds
        if type_run.computed:
            per_chunk = type_run.seconds / type_run.computed
            result.eval_seconds_saved = (run.corpus_chunks - stats.chunks) * per_chunk


def sequential_summary(
    run: SequentialRun, seed: int, min_chunks: int, target: float | None
) -> dict[str, Any]:
    """The report's ``sequential`` record."""
    return {
        "target": target,
        "seed": seed,
        "min_chunks": min_chunks,
        "corpus_chunks": run.corpus_chunks,
        "base_chunks": run.base_chunks,
        "tokens_scored": run.tokens_scored,
        "tokens_full": run.tokens_full,
        "seconds": run.seconds,
        "seconds_saved": run.seconds_saved,
        "cache_hits": run.cache_hits,
    }
