"""Benchmark: ranking f16/q8_0/q4_k_m/q4_0 with `eval --target-error 1%` against the full corpus.

Same model, same corpus, same run: the embedded tiny-llama (3.4M parameters), converted and
quantized here, on the embedded held-out text in chunks of 128 tokens. Three evaluations:

1. the full corpus through llama-perplexity (the default `ggufkit eval`, speed test off);
2. `--target-error 1%` with an empty per-chunk cache;
3. the same again: the baseline's (and the types') chunk results come from the cache.

Tokens count every model's scored chunks, the baseline's included. Aim: >= 10x fewer tokens.

    .venv/bin/python benchmarks/bench_eval.py [--ctx 128] [--target 0.01] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TYPES = ["q8_0", "q4_k_m", "q4_0"]
AIM = 10.0


def make_models(out: Path) -> list[Path]:
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model
    from ggufkit.quantize import quantize

    f16 = out / "tiny-llama-f16.gguf"
    convert(embedded_model("tiny-llama"), f16, outtype="f16")
    return [f16, *(r.output for r in quantize(f16, TYPES, outdir=out))]


def ranking(report: object) -> str:
    models = [m for m in report.models if not m.is_baseline]  # type: ignore[attr-defined]
    ordered = sorted(models, key=lambda m: m.kld_mean)
    return " < ".join(m.type for m in ordered)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("GGUFKIT_NO_PROGRESS", "1")
    from ggufkit.evaluate import evaluate
    from ggufkit.evaluate.report import eval_table

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        os.environ["GGUFKIT_EVAL_CACHE_DIR"] = str(work / "cache")  # starts empty
        models = make_models(work)
        common = {"ctx": args.ctx, "speed": False}

        started = time.perf_counter()
        full = evaluate(models, **common)  # type: ignore[arg-type]
        full_s = time.perf_counter() - started
        full_tokens = full.chunks * full.ctx * len(models)

        runs = []
        for label in ("sequential, empty cache", "sequential, cache reused"):
            started = time.perf_counter()
            report = evaluate(models, target_error=args.target, seed=args.seed, **common)  # type: ignore[arg-type]
            runs.append((label, report, time.perf_counter() - started))

    print(eval_table(full))
    print()
    print(eval_table(runs[0][1]))
    print()
    print(f"model: embedded tiny-llama (3.4M parameters); context {args.ctx}; types f16 + "
          f"{', '.join(TYPES)}; target {100 * args.target:g}%")  # fmt: skip
    print(f"{'evaluation':<28} {'tokens':>9} {'wall s':>8}  ranking by KLD")
    print(
        f"{'full corpus (llama-perplexity)':<28} {full_tokens:>9} {full_s:>8.1f}  {ranking(full)}"
    )
    for label, report, seconds in runs:
        seq = report.sequential
        print(f"{label:<28} {seq['tokens_scored']:>9} {seconds:>8.1f}  {ranking(report)}"
              f"   (cache hits {seq['cache_hits']})")  # fmt: skip
    label, first, first_s = runs[0]
    ratio = full_tokens / first.sequential["tokens_scored"]
    print(
        f"tokens: {ratio:.1f}x fewer (aim {AIM:g}x: {'met' if ratio >= AIM else 'NOT met'}); "
        f"wall time: {full_s / first_s:.1f}x less with an empty cache, "
        f"{full_s / runs[1][2]:.1f}x with the cache"
    )
    same = ranking(full) == ranking(first)
    print(f"same ranking as the full corpus: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
