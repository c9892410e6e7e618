"""Benchmark: `ggufkit convert --engine upstream` against the pinned convert_hf_to_gguf.py by hand.

The upstream engine is that same script in a child process; what ggufkit adds around it
(start-up, the checkpoint's header for the progress bar and the free-disk check, the chat
template choice, the written file's header for the result, the rename) must cost next to
nothing. One checkpoint (a random LLaMA of SmolLM2-135M's shape: 576 wide, 30 layers, GQA 9/3,
49152-row vocab; bf16, written once with numpy under GGUFKIT_HOME/bench) converted to f16 both
ways, in alternating fresh processes (by hand first, so both find the page cache warm), ``--runs``
pairs. Target: ggufkit's wall time <= 1.05x the by-hand run's, as the median of the per-pair
ratios (the rule every benchmark here judges by, ``floors.paired_verdict``: pairs run back to
back share the machine's mood; single runs vary by 20% on a shared machine), held as the exit
code. Printed too: best against best, and ggufkit's own time outside
its child (its wall time less the child's lifetime, which ``convert --json`` reports as
``phases.upstream``), the overhead measured directly.

    .venv/bin/python benchmarks/bench_convert_upstream.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from floors import MB, measure, total_bytes, warm_page_cache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGET = 1.05
SHAPE = {"hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3}


def ensure_model(bench: Path) -> Path:
    from tiny import write_random_llama

    model = bench / "llama-135m-bf16"
    if (model / "config.json").is_file():
        return model
    print(f"generating the model in {model} (once) ...", flush=True)
    partial = model.with_name(model.name + ".partial")
    write_random_llama(partial, **SHAPE, vocab=49152, shards=1, dtype="bf16")
    os.replace(partial, model)
    return model


def by_hand(model: Path, out: Path) -> list[str]:
    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    command = ["env", f"PYTHONPATH={source / 'gguf-py'}", sys.executable]
    command += [str(source / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out)]
    return [*command, "--outtype", "f16"]


def through_ggufkit(model: Path, out: Path) -> list[str]:
    command = [str(Path(sys.executable).with_name("ggufkit")), "-q", "convert", str(model)]
    command += ["-o", str(out), "--engine", "upstream", "--force", "--json"]
    return ["sh", "-c", 'exec "$@" > "$0"', str(out.with_suffix(".json")), *command]


def run(command: list[str], out: Path, cpu: list[float] | None = None) -> float:
    """Wall seconds of one fresh run; its CPU seconds (children included) go to ``cpu``."""
    out.unlink(missing_ok=True)
    os.sync()  # the previous output's dirty pages are not this run's to write
    data = measure(command)
    if data["rc"] != 0:
        raise SystemExit(f"failed (exit {data['rc']}): {' '.join(command)}")
    if cpu is not None:
        cpu.append(float(data["user"]) + float(data["sys"]))
    return float(data["wall"])


def child_seconds(out: Path) -> float:
    """The upstream child's lifetime in ggufkit's run (its --json ``phases``)."""
    return float(json.loads(out.with_suffix(".json").read_text())["phases"]["upstream"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from ggufkit.core import paths

    bench = paths.home() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    model = ensure_model(bench)
    shards = sorted(model.glob("*.safetensors"))
    warm_page_cache(shards)
    out = bench / "out-upstream-f16.gguf"
    print(f"--- bf16 -> f16, {total_bytes(shards) / MB:.0f} MB, {args.runs} pairs ---")
    started = time.perf_counter()
    run(through_ggufkit(model, out), out)  # warm-up: the upstream source's first unpack
    print(f"  warm-up run {time.perf_counter() - started:.2f} s, left out")
    hand: list[float] = []
    ours: list[float] = []
    own: list[float] = []
    hand_cpu: list[float] = []
    ours_cpu: list[float] = []
    for _ in range(args.runs):
        hand.append(run(by_hand(model, out), out, hand_cpu))
        ours.append(run(through_ggufkit(model, out), out, ours_cpu))
        own.append(ours[-1] - child_seconds(out))
        print(
            f"  by hand {hand[-1]:6.2f} s   ggufkit --engine upstream {ours[-1]:6.2f} s "
            f"(of which its own, outside the child: {own[-1]:.2f} s)",
            flush=True,
        )
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)
    ratios = [o / h for o, h in zip(ours, hand, strict=True)]
    best = min(ours) / min(hand)
    median = statistics.median(ratios)
    met = median <= TARGET
    print(
        f"upstream engine: ratio per pair {', '.join(f'{r:.3f}' for r in ratios)} (median "
        f"{statistics.median(ratios):.3f}x); ggufkit's own time outside the child (start-up, "
        f"checks, header read, rename) median {statistics.median(own):.2f} s = "
        f"{statistics.median(own) / statistics.median(hand):.3f} of the by-hand run; CPU "
        f"seconds (less disturbed by other processes) median {statistics.median(ours_cpu):.2f}"
        f" against {statistics.median(hand_cpu):.2f}: "
        f"{statistics.median(ours_cpu) / statistics.median(hand_cpu):.3f}x"
    )
    print(
        f"upstream engine: best {min(ours):.2f} s against {min(hand):.2f} s by hand: "
        f"{best:.3f}x; median pair ratio {median:.3f}x, target <= {TARGET:.2f}x: "
        f"{'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
