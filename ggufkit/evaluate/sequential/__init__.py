"""``eval --target-error``: sequential estimation, each type scored until its 95 % intervals
against the baseline are within the target (docs/eval-intervals.md).

``estimator`` (the run and what it puts in the report), ``intervals`` (the statistics and the
stopping rule), ``chunkeval`` (in-process per-chunk scoring, in a child process), ``batchscore``
(a llama.cpp context set up as llama-perplexity's), ``chunkcache`` (per-chunk results kept
between runs).
"""

from ggufkit.evaluate.sequential.estimator import (
    SequentialRun,
    TypeRun,
    fill_results,
    run_sequential,
    sequential_summary,
)

__all__ = ["SequentialRun", "TypeRun", "fill_results", "run_sequential", "sequential_summary"]
