"""Evaluate GGUF files: perplexity, KL-divergence against a baseline, size and speed.

``evaluate()`` runs ``llama-perplexity`` and ``llama-bench`` on each model and returns an
:class:`EvalReport`; :mod:`ggufkit.evaluate.report` turns it into the guide's Markdown table and a plot.

JSON shape of ``ggufkit eval --json`` (``EvalReport.to_json()``; read back with
``EvalReport.from_json``). Missing measurements are ``null``::

    {
      "schema": "ggufkit.eval/1",
      "corpus": "path/to/corpus.txt", "corpus_sha256": "…", "corpus_tokens": 17776,
      "ctx": 512, "chunks": 34,              # llama-perplexity context and chunks actually used
      "baseline": "model-f16.gguf",          # null when no KL-divergence was measured
      "llama_cpp_commit": "0c1e57098",
      "bench": {"n_prompt": 512, "n_gen": 128, "repetitions": 3},   # {} with --no-speed
      "models": [
        {
          "name": "Q4_0",                    # column label (file stem when two types repeat)
          "path": "model-Q4_0.gguf", "type": "Q4_0", "model": "7B",
          "size_bytes": 3825065984, "n_params": 6738415616, "bpw": 4.54,
          "is_baseline": false,
          "ppl": 6.1565, "ppl_err": 0.034,   # perplexity; llama-perplexity's standard error
          "kld_mean": 0.031, "kld_err": 0.0002, "kld_median": 0.02, "kld_p99": 0.2,
          "kld_max": 1.9,                    # KL-divergence from the baseline, nats per token
          "top1_agreement": 0.93, "top1_err": 0.001,   # fraction of tokens with the same top token
          "threads": 8,
          "pp_tps": 180.2, "pp_tps_std": 1.1, "tg_tps": 18.3, "tg_tps_std": 0.2,  # tokens/s
          "ms_per_token": 54.6, "pp_ms_per_token": 5.5,                # 1000 / tokens per second
          # 95 % half-widths in both modes (whole corpus: 1.96 x llama-perplexity's standard
          # errors; ΔPPL is its paired "PPL(Q)-PPL(base)"); --target-error: Student t over chunks
          "ppl_ci": 0.05, "delta_ppl": 0.21, "delta_ppl_ci": 0.03, "kld_ci": 0.001,
          "top1_ci": 0.004,
          # with --target-error (else null): chunks scored, seconds spent and saved
          "chunks": 16, "eval_seconds": 12.5, "eval_seconds_saved": 240.0
        }
      ],
      "sequential": null   # with --target-error: {"target": 0.01, "seed": 0, "min_chunks": 16,
                           #   "corpus_chunks": 332, "base_chunks": 28, "tokens_scored": ...,
                           #   "tokens_full": ..., "seconds": ..., "seconds_saved": ..., "cache_hits": 0}
    }
"""

from ggufkit.evaluate.pipeline import default_corpus, evaluate
from ggufkit.evaluate.ppl import count_tokens, kl_divergence, perplexity
from ggufkit.evaluate.results import SCHEMA, EvalReport, ModelResult, SpeedResult
from ggufkit.evaluate.speed import benchmark

__all__ = [
    "SCHEMA",
    "EvalReport",
    "ModelResult",
    "SpeedResult",
    "benchmark",
    "count_tokens",
    "default_corpus",
    "evaluate",
    "kl_divergence",
    "perplexity",
]
