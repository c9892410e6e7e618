"""Benchmark: `ggufkit quantize` vs the raw pinned llama-quantize, q4_0 of a ~1B f16 GGUF.

The model (LLaMA-shaped, random f16 weights, fixed seed, a minimal valid vocabulary) is written
once with gguf-py's GGUFWriter, tensor by tensor, and cached under GGUFKIT_HOME/bench. Both sides
run as fresh processes, alternating, after one untimed warm-up each (page cache, type table).

ggufkit's own share of a run is its wall time less its llama-quantize child's lifetime (spawn to
reap, ``tool_seconds`` in its --json), both from the same invocation: Python start-up, imports,
the checks, the rename, the JSON. Target: the median share over the runs <= 1 % of the raw
binary's median wall time, held as the exit code (as are byte-identical outputs).

Before timing it checks that the modules the command imports have an up-to-date ``.pyc`` and
compiles those that have none, as pip (and ``make install``) would, unless ``--as-is``; either
way it says which, and whether PYTHONDONTWRITEBYTECODE is set.

    .venv/bin/python benchmarks/bench_quantize.py [--runs 7] [--layers 20] [--type q4_0] [--as-is]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from startup import bytecode_env, command_bytecode, import_times, precompile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from random_gguf import write_random_gguf  # noqa: E402

TARGET_SHARE = 0.01  # ggufkit's own share, of the raw binary's median wall time
# What `ggufkit quantize` imports when it runs, beyond the CLI and the command's module.
LAZY_MODULES = ("ggufkit.quantize", "ggufkit.llamacpp.build", "ggufkit.llamacpp.runner")


def make_model(path: Path, *, layers: int, seed: int = 0) -> Path:
    """Write the benchmark GGUF (a ~1B LLaMA shape when ``layers`` is 22), atomically."""
    return write_random_gguf(
        path, hidden=2048, intermediate=5632, layers=layers, heads=32, kv_heads=4,
        vocab=32000, scale=0.02, seed=seed,
    )  # fmt: skip


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds (spawn to exit, as a user waits) and stdout of a fresh process."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def check_bytecode(as_is: bool) -> None:
    """Say whether the command's modules are precompiled; compile them unless ``as_is``."""
    print(bytecode_env())
    state = command_bytecode(sys.executable, "quantize", LAZY_MODULES)
    print(f"bytecode of `ggufkit quantize`: {state.describe()}")
    if state.stale and not as_is:
        compiled = precompile(state.stale)
        state = command_bytecode(sys.executable, "quantize", LAZY_MODULES)
        print(
            f"  compiled them before timing (what pip or `make install` leaves): "
            f"{'done' if compiled else 'FAILED'}; now {state.describe()}"
        )
    elif state.stale:
        print("  --as-is: measured so, compiled on every start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=7, help="the median of 7 holds on a busy 2-core VM"
    )
    parser.add_argument("--layers", type=int, default=20, help="20 layers: ~1.0B parameters")
    parser.add_argument("--type", default="q4_0")
    parser.add_argument("--as-is", action="store_true", help="do not compile missing .pyc files")
    args = parser.parse_args()

    from ggufkit.core import paths
    from ggufkit.formats.gguf_reader import read_gguf
    from ggufkit.llamacpp.build import find_tool

    binary = str(find_tool("llama-quantize"))
    bench = paths.home() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    model = bench / f"bench-llama-{args.layers}l-f16.gguf"
    if not model.is_file():
        print(f"generating the benchmark model {model} ...", flush=True)
        started = time.perf_counter()
        make_model(model, layers=args.layers)
        print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    info = read_gguf(model, max_array_items=0)
    ggufkit = str(Path(sys.executable).with_name("ggufkit"))
    check_bytecode(args.as_is)
    out_dir = bench / "quantize-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    out_raw, out_kit = out_dir / "raw.gguf", out_dir / "kit.gguf"
    kit_args = ["-q", "quantize", str(model), args.type, "-o", str(out_kit), "--json"]
    outputs = {"raw binary": out_raw, "ggufkit": out_kit}
    sides = {
        "raw binary": [binary, str(model), str(out_raw), args.type.upper()],
        "ggufkit": [ggufkit, *kit_args],
    }
    with open(model, "rb") as handle:  # page cache
        while handle.read(64 << 20):
            pass
    for command in sides.values():  # warm-up, untimed
        timed(command)
    wall: dict[str, list[float]] = {name: [] for name in sides}
    own: list[float] = []
    for run in range(args.runs):
        order = list(sides) if run % 2 == 0 else list(reversed(sides))
        for name in order:
            # Each side writes a new file, with the other's dirty pages already on disk: replacing
            # an existing 0.5 GB output (or flushing it) costs either side a variable 0.3 s or so.
            outputs[name].unlink(missing_ok=True)
            os.sync()
            seconds, stdout = timed(sides[name])
            wall[name].append(seconds)
            note = ""
            if name == "ggufkit":  # its own share: the whole run less llama-quantize's lifetime
                own.append(seconds - json.loads(stdout)[0]["tool_seconds"])
                note = f", own share {own[-1] * 1000:.0f} ms"
            print(f"run {run + 1} {name:10s} {seconds:6.2f} s wall{note}", flush=True)
    identical = out_raw.read_bytes() == out_kit.read_bytes()
    out_kit.unlink()
    imports = import_times([ggufkit, *kit_args])
    interpreter = statistics.median(timed([sys.executable, "-c", "pass"])[0] for _ in range(5))
    startup = statistics.median(timed([ggufkit, "--version"])[0] for _ in range(5))
    load = os.getloadavg()[0]

    raw, kit = statistics.median(wall["raw binary"]), statistics.median(wall["ggufkit"])
    share = statistics.median(own)
    met = share <= TARGET_SHARE * raw
    print(
        f"\nmodel: {info.parameter_count / 1e9:.2f}B parameters, {info.file_size / 1e9:.2f} GB f16"
    )
    print(f"{args.type}: outputs byte-identical: {identical}")
    print(f"raw binary  median {raw:6.2f} s wall (min {min(wall['raw binary']):.2f})")
    print(
        f"ggufkit     median {kit:6.2f} s wall (min {min(wall['ggufkit']):.2f}), {kit / raw:.3f}x"
    )
    print(
        f"ggufkit's own share (its wall less its llama-quantize's lifetime, same run), median of "
        f"{len(own)}: {share * 1000:.0f} ms = {share / raw * 100:.2f} % of the raw binary's "
        f"median (min {min(own) * 1000:.0f} ms); target <= {TARGET_SHARE * 100:.0f} % "
        f"({TARGET_SHARE * raw * 1000:.0f} ms): {'met' if met else 'MISSED'}"
    )
    print(
        f"of which a bare `python -c pass` takes {interpreter * 1000:.0f} ms and "
        f"`ggufkit --version` (Python, click, the CLI root) {startup * 1000:.0f} ms"
    )
    print(imports.describe())
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs")
    shutil.rmtree(out_dir, ignore_errors=True)
    if not identical:
        print("FAILED: the outputs differ", file=sys.stderr)
        return 1
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
