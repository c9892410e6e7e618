"""Benchmark: `eval --target-error` against the whole-corpus eval (llama-perplexity), same run.

Two models, each as f16 plus quantized types, evaluated on chunks of 128 tokens:

- the embedded tiny-llama (3.4M parameters), types q8_0/q4_k_m/q4_0, on the first
  ``--tiny-chunks`` chunks of its held-out text;
- a random-weight LLaMA shaped like SmolLM2-135M (hidden 576, 30 layers, 9/3 heads,
  intermediate 1536, vocabulary 49152; speed does not depend on training), type q8_0, on the
  first ``--chunks`` chunks of the held-out text.

Per model, three or four evaluations of the same chunks:

1. the whole corpus through llama-perplexity (the default `ggufkit eval`, speed test off);
2. the in-process scorer on every chunk (a target no run meets): its time per token against
   llama-perplexity's, the two per-token speeds and their ratio (aim: <= 1.1);
3. `--target-error 1%` with an empty per-chunk cache: fewer tokens, and less wall time than 1.;
4. (tiny-llama) the same again: the chunk results come from the cache.

Tokens count every model's scored chunks, the baseline's included. Exit status 1 when the
scorer is more than 1.1x slower per token than llama-perplexity on either model, or when
`--target-error 1%` is not faster than the whole corpus on the 135M model.

    .venv/bin/python benchmarks/bench_eval.py [--ctx 128] [--target 0.01] [--chunks 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TYPES = ["q8_0", "q4_k_m", "q4_0"]
AIM_TOKENS = 10.0
AIM_PER_TOKEN = 1.1  # the scorer's time per token, at most this times llama-perplexity's
SMOL = {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3}
SMOL_VOCAB = 49152


def make_tiny(out: Path) -> list[Path]:
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model
    from ggufkit.quantize import quantize

    f16 = out / "tiny-llama-f16.gguf"
    convert(embedded_model("tiny-llama"), f16, outtype="f16")
    return [f16, *(r.output for r in quantize(f16, TYPES, outdir=out))]


def make_smol(out: Path) -> list[Path]:
    from random_gguf import write_random_gguf

    from ggufkit.quantize import quantize

    f16 = write_random_gguf(out / "smol-random-f16.gguf", **SMOL, vocab=SMOL_VOCAB)
    return [f16, *(r.output for r in quantize(f16, ["q8_0"], outdir=out))]


def ranking(report: Any) -> str:
    models = [m for m in report.models if not m.is_baseline]
    return " < ".join(m.type for m in sorted(models, key=lambda m: m.kld_mean))


def timed(models: list[Path], cache: Path | None, **options: Any) -> tuple[Any, float]:
    from ggufkit.evaluate import evaluate

    if cache is not None:
        os.environ["GGUFKIT_EVAL_CACHE_DIR"] = str(cache)
    started = time.perf_counter()
    report = evaluate(models, speed=False, **options)
    return report, time.perf_counter() - started


def compare(label: str, models: list[Path], work: Path, args: argparse.Namespace,
            chunks: int | None, *, with_cache: bool) -> dict[str, Any]:  # fmt: skip
    """The evaluations of one model; prints its lines and returns the ratios."""
    from ggufkit.evaluate.report import eval_table

    common: dict[str, Any] = {"ctx": args.ctx, "chunks": chunks}
    full, full_s = timed(models, None, **common)
    tokens = full.chunks * full.ctx * len(models)
    every, every_s = timed(models, work / f"{label}-every", target_error=1e-12, **common)
    runs = [("target, empty cache", *timed(models, work / f"{label}-cache",
                                            target_error=args.target, seed=args.seed, **common))]  # fmt: skip
    if with_cache:
        runs.append(("target, cache reused", *timed(models, work / f"{label}-cache",
                                                     target_error=args.target, seed=args.seed, **common)))  # fmt: skip
    print(eval_table(full))
    print()
    print(eval_table(runs[0][1]))
    print()
    print(f"{'evaluation':<30} {'tokens':>9} {'wall s':>8} {'tok/s':>8}  ranking by KLD")
    print(f"{'whole corpus (llama-perplexity)':<30} {tokens:>9} {full_s:>8.1f} "
          f"{tokens / full_s:>8.0f}  {ranking(full)}")  # fmt: skip
    every_tokens = every.sequential["tokens_scored"]
    print(f"{'in-process, every chunk':<30} {every_tokens:>9} {every_s:>8.1f} "
          f"{every_tokens / every_s:>8.0f}  {ranking(every)}")  # fmt: skip
    for name, report, seconds in runs:
        seq = report.sequential
        print(f"{name:<30} {seq['tokens_scored']:>9} {seconds:>8.1f} "
              f"{seq['tokens_scored'] / seconds:>8.0f}  {ranking(report)}"
              f"   (cache hits {seq['cache_hits']})")  # fmt: skip
    per_token = (every_s / every_tokens) / (full_s / tokens)
    base_full, base_every = full.baseline_result.ppl, every.baseline_result.ppl
    print(f"flash attention {full.flash_attn_resolved} (-fa {full.flash_attn}) on both sides; "
          f"baseline PPL {base_full:.4f} (llama-perplexity) vs {base_every:.4f} (in-process), "
          f"{abs(base_every / base_full - 1):.1e} relative")  # fmt: skip
    print(f"time per token, in-process / llama-perplexity: {per_token:.2f}x "
          f"(aim <= {AIM_PER_TOKEN}: {'met' if per_token <= AIM_PER_TOKEN else 'NOT met'})")  # fmt: skip
    first_s, first_tokens = runs[0][2], runs[0][1].sequential["tokens_scored"]
    print(f"--target-error {100 * args.target:g}%: {tokens / first_tokens:.1f}x fewer tokens, "
          f"wall {first_s:.1f} s vs {full_s:.1f} s ({full_s / first_s:.2f}x less)"
          + (f", {full_s / runs[1][2]:.1f}x with the cache" if with_cache else ""))  # fmt: skip
    print(f"same ranking as the whole corpus: {ranking(full) == ranking(runs[0][1])}")
    print()
    return {"per_token": per_token, "wall": first_s / full_s, "tokens": tokens / first_tokens}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=32, help="chunks of the 135M model's corpus")
    parser.add_argument("--tiny-chunks", type=int, default=96, help="chunks of tiny-llama's")
    parser.add_argument("--skip-135m", action="store_true", help="the tiny model only")
    args = parser.parse_args(argv)
    os.environ.setdefault("GGUFKIT_NO_PROGRESS", "1")
    from ggufkit.evaluate.batchscore import default_threads

    print(f"threads {default_threads()} on both sides; context {args.ctx}\n")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        print(f"== embedded tiny-llama (3.4M parameters): f16 + {', '.join(TYPES)}, "
              f"{args.tiny_chunks} chunks")  # fmt: skip
        tiny = compare("tiny", make_tiny(work), work, args, args.tiny_chunks, with_cache=True)
        smol = None
        if not args.skip_135m:
            print(f"== random LLaMA, SmolLM2-135M shape (~135M parameters): f16 + q8_0, "
                  f"{args.chunks} chunks")  # fmt: skip
            smol = compare("smol", make_smol(work), work, args, args.chunks, with_cache=False)
    failed = tiny["per_token"] > AIM_PER_TOKEN
    if smol is not None:
        failed |= smol["per_token"] > AIM_PER_TOKEN or smol["wall"] >= 1.0
    print("aims " + ("NOT met" if failed else "met") + ": per-token ratio <= "
          f"{AIM_PER_TOKEN} on both models, --target-error faster than the whole corpus on 135M")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
