"""`eval --target-error`: the interval maths and the per-chunk cache (no llama.cpp needed).

The real runs, the check against llama-perplexity and the coverage proof are in
test_eval_sequential.py."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.evaluate.sequential.chunkcache import ChunkCache, chunk_key
from ggufkit.evaluate.sequential.intervals import (
    ChunkValues,
    binomial_cdf,
    chunk_order,
    delta_ppl_interval,
    mean_interval,
    paired_stats,
    proportion_interval,
    stopping_point,
    t_quantile,
)

# --- the statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dof", "exact"),
    # Student's t 0.975 quantiles from published tables
    [(5, 2.570582), (7, 2.364624), (10, 2.228139), (15, 2.131450), (30, 2.042272), (200, 1.971896)],
)
def test_t_quantile_matches_the_tables(dof: int, exact: float) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(exact, abs=2e-3)


def test_binomial_cdf_equals_the_direct_sum() -> None:
    n, p = 60, 0.95
    for k in (45, 55, 60):
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binomial_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)
    assert binomial_cdf(380, 400, 0.95) > 0.4  # 95.0 % observed: far from rejected
    assert binomial_cdf(360, 400, 0.95) < 1e-4  # 90 %: rejected


def test_mean_interval_is_the_textbook_t_interval() -> None:
    x = np.array([1.0, 2.0, 4.0, 7.0])
    got = mean_interval(x)
    assert got.value == 3.5
    assert got.half == pytest.approx(3.182446 * np.std(x, ddof=1) / 2, rel=1e-3)


def test_paired_delta_is_much_narrower_than_either_perplexity() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.3, 200)  # chunk losses vary a lot between chunks...
    quant = base + rng.normal(0.01, 0.002, 200)  # ...but two types move together
    delta = delta_ppl_interval(quant, base)
    assert delta.value == pytest.approx(math.exp(quant.mean()) - math.exp(base.mean()))
    ppl = mean_interval(np.exp(base))
    assert delta.half < ppl.half / 20


def test_fixed_n_intervals_cover_the_population_value() -> None:
    """Without early stopping, a t interval from 30 of 2000 chunks (no finite-population
    correction, so it can only be wide) holds the population value about 95 % of the time."""
    rng = np.random.default_rng(7)
    base = rng.gamma(20, 0.15, 2000)
    nll = base + rng.normal(0.02, 0.01, 2000)
    kld = rng.gamma(2, 0.01, 2000)
    top1 = rng.beta(40, 4, 2000)
    hits = {"delta_ppl": 0, "kld": 0, "top1": 0}
    full = paired_stats(nll, base, kld, top1, 63)
    for seed in range(400):
        pick = chunk_order(2000, seed)[:30]
        stats = paired_stats(nll[pick], base[pick], kld[pick], top1[pick], 63)
        for name in hits:
            hits[name] += getattr(stats, name).covers(getattr(full, name).value)
    for name, count in hits.items():
        assert binomial_cdf(count, 400, 0.95) > 0.05, (name, count)
        assert count < 400, name  # an interval so wide it always covers would be wrong too


def test_top1_interval_never_collapses_when_no_chunk_disagrees() -> None:
    """16 chunks of 63 tokens, all in full agreement: the chunks' spread is 0, the interval is
    the binomial one at the Agresti-Coull rate (z²/2 disagreements in 1008 + z² tokens)."""
    got = proportion_interval(np.ones(16), 63)
    z2 = 1.959964**2
    rate = (z2 / 2) / (1008 + z2)
    assert got.value == 1.0
    assert got.half == pytest.approx(t_quantile(0.975, 15) * math.sqrt(rate * (1 - rate) / 1008))
    spread = np.array([1.0, 0.5] * 8)  # a large spread between chunks wins over the floor
    assert proportion_interval(spread, 63).half == pytest.approx(mean_interval(spread).half)


def test_stopping_waits_for_min_chunks_and_for_the_target() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(3.0, 0.3, 500)
    nll = base + rng.normal(0.05, 0.05, 500)
    kld, top1 = np.full(500, 0.01), np.full(500, 0.9)
    loose = stopping_point(ChunkValues(nll, base, kld, top1, 63), target=0.5, min_chunks=12)
    assert loose.chunks == 12
    tight = stopping_point(ChunkValues(nll, base, kld, top1, 63), target=0.005, min_chunks=12)
    assert 12 < tight.chunks < 500 and tight.widest() <= 0.005
    exhausted = stopping_point(ChunkValues(nll, base, kld, top1, 63), target=1e-9, min_chunks=12)
    assert exhausted.chunks == 500


def test_chunk_order_is_seeded_and_a_permutation() -> None:
    # A report names its seed: the same seed must give the same order in any run and process.
    assert list(chunk_order(12, 4)) == [1, 0, 8, 2, 10, 9, 7, 6, 4, 3, 5, 11]
    assert list(chunk_order(50, 4)) != list(chunk_order(50, 5))
    assert sorted(chunk_order(50, 4)) == list(range(50))


# --- the cache ------------------------------------------------------------------------------


def test_chunk_keys_depend_on_content_not_position() -> None:
    a = chunk_key("base", "sha", "128", tokens=[1, 2, 3])
    assert a == chunk_key("base", "sha", "128", tokens=[1, 2, 3])
    assert a != chunk_key("base", "sha", "128", tokens=[1, 2, 4])
    assert a != chunk_key("base", "sha", "64", tokens=[1, 2, 3])


def test_cache_round_trip_and_least_recently_used_eviction(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    blob = np.zeros(1000, dtype=np.float16)
    for i, key in enumerate(["aa1", "bb2", "cc3"]):
        cache.put(key, {"lp": blob, "nll": np.float64(i)})
        old = time.time() - 100 + i
        os.utime(cache._path(key), (old, old))
    assert cache.get("zz9") is None
    assert float(cache.get("aa1")["nll"]) == 0.0
    size = cache.size()
    freed = cache.trim(cap=size - 1)
    assert freed > 0
    assert cache.get("bb2") is None  # the least recently used went first
    assert cache.get("aa1") is not None and cache.get("cc3") is not None
    assert list(tmp_path.glob("*/*.partial*")) == []


def test_target_error_takes_a_percentage() -> None:
    result = CliRunner().invoke(cli, ["eval", "x.gguf", "--target-error", "150%"])
    assert result.exit_code == 2 and "between 0 and 100%" in result.stderr
    result = CliRunner().invoke(cli, ["eval", "x.gguf", "--target-error", "abc"])
    assert result.exit_code == 2 and "percentage" in result.stderr
