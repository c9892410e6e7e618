"""Benchmark: `ggufkit batch` vs the same commands by hand, and the per-step costs docs/scale.md
projects from.

1. Anchor: the embedded models × 3 types with an importance matrix, as one `ggufkit batch` run
   (a fresh process, local scheduler) vs the same `ggufkit convert/imatrix/quantize` commands run
   one after another, each a fresh process. Both write the same bytes (tests/test_batch_local.py);
   the ratio is batch wall time / by-hand wall time.
2. Per-step costs on a random LLaMA (~166M parameters; GB here means 1e9 bytes of f16): convert
   MB/s, quantize s/GB per type, eval s per 512-token chunk per file.

    .venv/bin/python benchmarks/bench_batch.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
GGUFKIT = [sys.executable, "-m", "ggufkit"]
ENV = {**os.environ, "GGUFKIT_NO_PROGRESS": "1"}


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(a) for a in args], check=True, env=ENV, capture_output=True)
    return time.perf_counter() - started


def anchor(work: Path) -> dict[str, float]:
    from batch_reference import MODELS, TYPES, write_plan

    from ggufkit.data import calibration_corpus, embedded_model

    work.mkdir(parents=True)
    plan = write_plan(work)
    out = work / "out"
    by_hand = 0.0
    for name, (source, base) in MODELS.items():
        f16, imatrix = out / name / f"{name}-f16.gguf", out / name / f"{name}-imatrix.gguf"
        f16.parent.mkdir(parents=True, exist_ok=True)
        convert = [*GGUFKIT, "convert", embedded_model(source), "-o", f16]
        by_hand += timed(convert + (["--delta-base", embedded_model(base)] if base else []))
        by_hand += timed(
            [
                *GGUFKIT,
                "imatrix",
                f16,
                "-f",
                calibration_corpus(),
                "-o",
                imatrix,
                "--ctx",
                "128",
                "--chunks",
                "2",
            ]
        )
        for qtype in TYPES:
            target = out / name / f"{name}-{qtype.upper()}.gguf"
            by_hand += timed([*GGUFKIT, "quantize", f16, qtype, "-o", target, "--imatrix", imatrix])
    shutil.rmtree(out)
    batch = timed([*GGUFKIT, "batch", plan])
    return {
        "by_hand_s": round(by_hand, 2),
        "batch_s": round(batch, 2),
        "ratio": round(batch / by_hand, 3),
    }


def step_costs(work: Path) -> dict[str, float]:
    from tiny import write_random_llama

    model = write_random_llama(
        work / "model", hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=16, shards=1
    )
    f16 = work / "m-f16.gguf"
    convert_s = timed([*GGUFKIT, "convert", model, "-o", f16])
    gb = f16.stat().st_size / 1e9
    costs = {"f16_gb": round(gb, 3), "convert_mb_per_s": round(gb * 1000 / convert_s, 1)}
    for qtype in ("q4_0", "q8_0", "q4_k_m"):
        seconds = timed([*GGUFKIT, "quantize", f16, qtype, "-o", work / f"m-{qtype}.gguf"])
        costs[f"quantize_{qtype}_s_per_gb"] = round(seconds / gb, 2)
    chunks = 4
    eval_s = timed(
        [
            *GGUFKIT,
            "eval",
            f16,
            work / "m-q4_0.gguf",
            "--ctx",
            "512",
            "--chunks",
            chunks,
            "--no-speed",
            "--corpus",
            ROOT / "ggufkit" / "data" / "corpus" / "heldout.txt",
        ]
    )
    costs["eval_s_per_chunk_per_file"] = round(eval_s / (2 * chunks), 2)
    costs["eval_s_per_chunk_per_gb"] = round(eval_s / (2 * chunks) / gb, 2)
    return costs


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        result = {"anchor": anchor(work / "anchor"), "steps": step_costs(work / "steps")}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
