"""95 % intervals on per-chunk statistics, the sequential stopping rule, and its coverage check.

Chunks are the sampling unit: each is scored on its own (no state carries over), so chunk totals
are treated as independent draws from the corpus and a type's statistics as paired with the
baseline's on the same chunks. The intervals are Student-t intervals on chunk means; perplexities
go through the delta method (see docs/eval-intervals.md for the reasoning and its limits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
DEFAULT_MIN_CHUNKS = 16
_T975_SMALL = (math.inf, 12.706205, 4.302653, 3.182446, 2.776445)  # from the published tables


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion; within 1e-3 of the tables for ``dof`` >= 5)."""
    if dof <= 0:
        return math.inf
    if p == 0.5 + LEVEL / 2 and dof < len(_T975_SMALL):
        return _T975_SMALL[dof]  # the expansion is poor for so few degrees of freedom
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


@dataclass(frozen=True)
class Interval:
    """An estimate and the half-width of its 95 % interval."""

    value: float
    half: float

    @property
    def low(self) -> float:
        return self.value - self.half

    @property
    def high(self) -> float:
        return self.value + self.half

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _half(values: np.ndarray) -> float:
    n = len(values)
    if n < 2:
        return math.inf
    return t_quantile(0.5 + LEVEL / 2, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)


def mean_interval(values: Sequence[float] | np.ndarray) -> Interval:
    """Mean of per-chunk values with a t interval."""
    x = np.asarray(values, dtype=np.float64)
    return Interval(float(x.mean()), _half(x))


def proportion_interval(values: Sequence[float] | np.ndarray, tokens_per_chunk: int) -> Interval:
    """Mean of per-chunk fractions (top-1 agreement), with a floor on its variance.

    Near 100 % most chunks show no disagreement at all, and a t interval from 16 such chunks is
    too narrow (measured: 90 % coverage for q8_0). The variance used is the larger of the chunks'
    and the binomial variance of all scored tokens at the Agresti-Coull rate, which adds z²/2
    disagreements and agreements so that it never vanishes.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return Interval(float(x.mean()), math.inf)
    z2 = NormalDist().inv_cdf(0.5 + LEVEL / 2) ** 2
    tokens = n * tokens_per_chunk
    rate = (float((1 - x).sum()) * tokens_per_chunk + z2 / 2) / (tokens + z2)
    var = max(float(np.var(x, ddof=1)) / n, rate * (1 - rate) / tokens)
    return Interval(float(x.mean()), t_quantile(0.5 + LEVEL / 2, n - 1) * math.sqrt(var))


def ppl_interval(nll: Sequence[float] | np.ndarray) -> Interval:
    """Perplexity ``exp(mean nll)`` from per-chunk mean NLLs (nats/token), delta method."""
    m = mean_interval(nll)
    ppl = math.exp(m.value)
    return Interval(ppl, ppl * m.half)


def delta_ppl_interval(nll: np.ndarray, base_nll: np.ndarray) -> Interval:
    """``PPL(type) - PPL(base)`` on the same chunks; the delta method on the paired chunk means.

    The influence of chunk i is ``PPL_q * a_i - PPL_b * b_i``: its spread is small when the two
    types' chunk losses move together, which is what makes the paired difference converge fast.
    """
    a = np.asarray(nll, dtype=np.float64)
    b = np.asarray(base_nll, dtype=np.float64)
    pa, pb = math.exp(a.mean()), math.exp(b.mean())
    return Interval(pa - pb, _half(pa * a - pb * b))


@dataclass(frozen=True)
class PairedStats:
    """A type's paired statistics against the baseline on its first ``chunks`` chunks."""

    chunks: int
    ppl: Interval
    base_ppl: Interval
    delta_ppl: Interval
    kld: Interval
    top1: Interval

    def widest(self) -> float:
        """The largest half-width on the scale of ``--target-error``: ΔPPL relative to
        PPL(base), KLD in nats (a log-ratio, so relative too), top-1 agreement as a fraction."""
        return max(self.delta_ppl.half / self.base_ppl.value, self.kld.half, self.top1.half)


def paired_stats(
    nll: np.ndarray, base_nll: np.ndarray, kld: np.ndarray, top1: np.ndarray, tokens: int
) -> PairedStats:
    """Per-chunk means (NLL, KLD per token; top-1 as a fraction; ``tokens`` scored a chunk)
    -> the paired statistics."""
    return PairedStats(
        chunks=len(nll),
        ppl=ppl_interval(nll),
        base_ppl=ppl_interval(base_nll),
        delta_ppl=delta_ppl_interval(nll, base_nll),
        kld=mean_interval(kld),
        top1=proportion_interval(top1, tokens),
    )


def should_stop(stats: PairedStats, target: float, min_chunks: int) -> bool:
    """Stop once every paired interval is within ``target`` after ``min_chunks`` chunks."""
    return stats.chunks >= min_chunks and stats.widest() <= target


@dataclass(frozen=True)
class ChunkValues:
    """One type's per-chunk values against the baseline, in scoring order: mean NLL of the
    type and of the baseline, mean KLD, top-1 agreement; ``tokens`` scored a chunk."""

    nll: np.ndarray
    base_nll: np.ndarray
    kld: np.ndarray
    top1: np.ndarray
    tokens: int

    def take(self, index: np.ndarray | slice) -> ChunkValues:
        return ChunkValues(
            self.nll[index], self.base_nll[index], self.kld[index], self.top1[index], self.tokens
        )

    def stats(self) -> PairedStats:
        return paired_stats(self.nll, self.base_nll, self.kld, self.top1, self.tokens)


def stopping_point(
    values: ChunkValues, *, target: float, min_chunks: int = DEFAULT_MIN_CHUNKS
) -> PairedStats:
    """The statistics where the sequential rule stops on chunks in the given order."""
    n = len(values.nll)
    for k in range(min(min_chunks, n), n + 1):
        stats = values.take(slice(0, k)).stats()
        if should_stop(stats, target, min_chunks) or k == n:
            return stats
    raise ValueError("no chunks")


@dataclass(frozen=True)
class Coverage:
    runs: int
    covered: dict[str, int]  # statistic -> runs whose interval held the full-corpus value
    mean_chunks: float
    total_chunks: int

    def rate(self, name: str) -> float:
        return self.covered[name] / self.runs

    def p_value(self, name: str) -> float:
        """One-sided exact binomial test of "coverage >= 95 %": P(X <= covered | runs, 0.95)."""
        return binomial_cdf(self.covered[name], self.runs, LEVEL)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), in logs so that n in the thousands does not underflow."""
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def coverage(
    values: ChunkValues,
    *,
    target: float,
    min_chunks: int = DEFAULT_MIN_CHUNKS,
    runs: int = 400,
    seed: int = 0,
) -> Coverage:
    """Repeat the early-stopped evaluation over ``runs`` chunk orders (seeds ``seed``..) on cached
    per-chunk values; count how often each interval holds the full-corpus value."""
    full = values.stats()
    truth = {name: getattr(full, name).value for name in ("delta_ppl", "ppl", "kld", "top1")}
    covered = dict.fromkeys(truth, 0)
    used = 0
    n = len(values.nll)
    for run in range(runs):
        stats = stopping_point(
            values.take(chunk_order(n, seed + run)), target=target, min_chunks=min_chunks
        )
        used += stats.chunks
        for name, value in truth.items():
            covered[name] += getattr(stats, name).covers(value)
    return Coverage(runs, covered, used / runs, n)


def chunk_order(n_chunks: int, seed: int) -> np.ndarray:
    """The seeded random order of the chunks: the same for every type of a run."""
    return np.random.default_rng(seed).permutation(n_chunks)
