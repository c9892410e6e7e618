"""Benchmark: `eval --target-error` against the whole-corpus eval (llama-perplexity), same run.

Two models, each as f16 plus quantized types, on chunks of 128 tokens of the held-out text:

- the embedded tiny-llama (3.4M parameters), types q8_0/q4_k_m/q4_0, ``--tiny-chunks`` chunks:
  1. the whole corpus through llama-perplexity (the default `ggufkit eval`, speed test off);
  2. the in-process scorer on every chunk (a target no run meets): time per token against 1.;
  3. `--target-error 1%` with an empty per-chunk cache; 4. the same again from the cache;
- a random-weight LLaMA shaped like SmolLM2-135M (hidden 576, 30 layers, 9/3 heads,
  intermediate 1536, vocabulary 49152: 163M parameters; speed does not depend on training),
  type q8_0, ``--chunks`` chunks: 1., and `--target-error` at ``--smol-target`` (2 %), whose
  time per token is compared with 1. on the chunks it needed. Random weights leave near-ties
  among the 49152 logits that q8_0 flips on ~5 % of positions (a trained model: ~1 %), so its
  same-top-token interval needs ~110 chunks to reach 1 %; at 2 % it needs 32.

Tokens count every model's scored chunks, the baseline's included. Exit status 1 when the
scorer is more than 1.1x slower per token than llama-perplexity on either model, or when
`--target-error` is not faster than the whole corpus on the 135M model.

    .venv/bin/python benchmarks/bench_eval.py [--ctx 128] [--target 0.01] [--chunks 64]
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
            chunks: int | None, target: float, *, every_chunk: bool) -> dict[str, Any]:  # fmt: skip
    """The evaluations of one model; prints its lines and returns the ratios."""
    from ggufkit.evaluate.report import eval_table

    common: dict[str, Any] = {"ctx": args.ctx, "chunks": chunks}
    full, full_s = timed(models, None, **common)
    tokens = full.chunks * full.ctx * len(models)
    runs = []
    if every_chunk:
        runs.append(("in-process, every chunk",
                     *timed(models, work / f"{label}-every", target_error=1e-12, **common)))  # fmt: skip
    for name in ("target, empty cache", "target, cache reused"):
        runs.append((name, *timed(models, work / f"{label}-cache", target_error=target,
                                  seed=args.seed, **common)))  # fmt: skip
        if not every_chunk:
            break  # the cache's effect is shown on tiny-llama
    first = runs[1] if every_chunk else runs[0]
    print(eval_table(full))
    print()
    print(eval_table(first[1]))
    print()
    print(f"{'evaluation':<32} {'tokens':>9} {'wall s':>8} {'tok/s':>8}  ranking by KLD")
    print(f"{'whole corpus (llama-perplexity)':<32} {tokens:>9} {full_s:>8.1f} "
          f"{tokens / full_s:>8.0f}  {ranking(full)}")  # fmt: skip
    for name, report, seconds in runs:
        seq = report.sequential
        print(f"{name:<32} {seq['tokens_scored']:>9} {seconds:>8.1f} "
              f"{seq['tokens_scored'] / seconds:>8.0f}  {ranking(report)}"
              f"   (cache hits {seq['cache_hits']})")  # fmt: skip
    _, scorer, scorer_s = runs[0]  # every chunk, else the chunks the target needed
    scorer_tokens = scorer.sequential["tokens_scored"]
    per_token = (scorer_s / scorer_tokens) / (full_s / tokens)
    base_full, base_in = full.baseline_result.ppl, scorer.baseline_result.ppl
    same = "on the same chunks" if every_chunk else "on the chunks the target needed"
    print(f"flash attention {full.flash_attn_resolved} (-fa {full.flash_attn}) on both sides; "
          f"baseline PPL {base_full:.4f} (llama-perplexity) vs {base_in:.4f} (in-process)")  # fmt: skip
    print(f"time per token, in-process {same} / llama-perplexity: {per_token:.2f}x "
          f"(aim <= {AIM_PER_TOKEN}: {'met' if per_token <= AIM_PER_TOKEN else 'NOT met'})")  # fmt: skip
    first_s, first_tokens = first[2], first[1].sequential["tokens_scored"]
    print(f"--target-error {100 * target:g}%: {tokens / first_tokens:.1f}x fewer tokens, "
          f"wall {first_s:.1f} s vs {full_s:.1f} s ({full_s / first_s:.2f}x less)"
          + (f", {full_s / runs[-1][2]:.1f}x with the cache" if every_chunk else ""))  # fmt: skip
    print(f"same ranking as the whole corpus: {ranking(full) == ranking(first[1])}")
    print()
    return {"per_token": per_token, "wall": first_s / full_s, "tokens": tokens / first_tokens}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=64, help="chunks of the 135M model's corpus")
    parser.add_argument("--smol-target", type=float, default=0.02,
                        help="the 135M model's target (see the module's docstring)")  # fmt: skip
    parser.add_argument("--tiny-chunks", type=int, default=96, help="chunks of tiny-llama's")
    parser.add_argument("--skip-135m", action="store_true", help="the tiny model only")
    args = parser.parse_args(argv)
    os.environ.setdefault("GGUFKIT_NO_PROGRESS", "1")
    from ggufkit.evaluate.sequential.batchscore import default_threads

    print(f"threads {default_threads()} on both sides; context {args.ctx}\n")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        print(f"== embedded tiny-llama (3.4M parameters): f16 + {', '.join(TYPES)}, "
              f"{args.tiny_chunks} chunks")  # fmt: skip
        tiny = compare("tiny", make_tiny(work), work, args, args.tiny_chunks, args.target,
                       every_chunk=True)  # fmt: skip
        smol = None
        if not args.skip_135m:
            print(f"== random LLaMA, SmolLM2-135M shape (~135M parameters): f16 + q8_0, "
                  f"{args.chunks} chunks")  # fmt: skip
            smol = compare("smol", make_smol(work), work, args, args.chunks, args.smol_target,
                           every_chunk=False)  # fmt: skip
    failed = tiny["per_token"] > AIM_PER_TOKEN
    if smol is not None:
        failed |= smol["per_token"] > AIM_PER_TOKEN or smol["wall"] >= 1.0
    print("aims " + ("NOT met" if failed else "met") + ": per-token ratio <= "
          f"{AIM_PER_TOKEN} on both models, --target-error faster than the whole corpus on 135M")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
