"""Benchmark: `ggufkit convert` against its floor and the pinned upstream convert_hf_to_gguf.py.

Three conversions of a random LLaMA (fixed seed, written once with numpy under
GGUFKIT_HOME/bench by ``tests/tiny.py:write_random_llama``): bf16 -> f16, f16 -> f16 and
f32 -> q8_0. For each, in the same run: the floor (``floors.py``: a page-cache copy of its input
and output bytes, and torch's kernel on every core; the larger counts), ggufkit as users run it
(a fresh process, median of ``--runs``, peak RSS), where its time went (interpreter start-up and
imports, then the phases ``convert --json`` reports, and the CPU seconds in user and kernel
space), and upstream's converter (the anchor). Target: ggufkit within 1.3x of the floor, held as
the exit code. ggufkit's first run of a new model also hashes the sources for provenance; that
run is reported and left out of the median.

``--shape 7b`` uses LLaMA-7B's real tensor shapes (13.5 GB of bf16, ~30 GB of disk with the
output; bf16 -> f16 only). There input plus output exceed this machine's RAM, so the floor is
the disk's, and the report says so.

    .venv/bin/python benchmarks/bench_convert.py [--runs 3] [--shape 1b|7b] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from floors import MB, Floor, measure, paired_runs, paired_verdict, total_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TARGET = 1.3
SHAPES = {
    # ~953M parameters: LLaMA-1B-like widths, 16 layers
    "1b": {"hidden": 2048, "intermediate": 5632, "layers": 16, "heads": 32, "kv_heads": 32},
    # LLaMA-7B exactly: 6.74B parameters
    "7b": {"hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32, "kv_heads": 32},
}


@dataclass(frozen=True)
class Case:
    name: str
    source_dtype: str
    outtype: str
    kernel: str  # floors.kernel_seconds kind


CASES = {
    "bf16-f16": Case("bf16 -> f16", "bf16", "f16", "bf16-f16"),
    "f16-f16": Case("f16 -> f16", "f16", "f16", "f16-f16"),
    "f32-q8_0": Case("f32 -> q8_0", "f32", "q8_0", "f32-q8_0"),
}


def ensure_model(bench: Path, shape: str, dtype: str) -> Path:
    from tiny import write_random_llama

    model = bench / f"llama-{shape}-{dtype}"
    if (model / "config.json").is_file():
        return model
    dims = SHAPES[shape]
    need = int(dims["layers"]) * 12 * dims["hidden"] ** 2 * (4 if dtype == "f32" else 2)
    if shutil.disk_usage(bench).free < 2.5 * need:
        raise SystemExit(f"{bench} has too little free disk for the {shape} {dtype} model")
    print(f"generating the {shape} {dtype} model in {model} (once) ...", flush=True)
    started = time.perf_counter()
    partial = model.with_name(model.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shards = 3 if shape == "7b" else 2
    write_random_llama(partial, **dims, shards=shards, dtype=dtype)  # type: ignore[arg-type]
    shutil.rmtree(model, ignore_errors=True)
    os.replace(partial, model)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return model


def run_ggufkit(model: Path, out: Path, outtype: str) -> dict[str, float]:
    """One fresh `ggufkit convert`, with the phases it reports and its CPU seconds."""
    report = out.with_suffix(".json")
    command = [str(Path(sys.executable).with_name("ggufkit")), "-q", "convert", str(model)]
    command += ["-o", str(out), "--outtype", outtype, "--force", "--json"]
    out.unlink(missing_ok=True)
    os.sync()  # the previous output's dirty pages are not this run's to write
    cpu = os.times()
    data = measure(["sh", "-c", 'exec "$@" > "$0"', str(report), *command])
    after = os.times()
    if data["rc"] != 0:
        raise SystemExit(f"ggufkit convert failed (exit {data['rc']}): {' '.join(command)}")
    result = json.loads(report.read_text())
    data["user"] = after.children_user - cpu.children_user
    data["system"] = after.children_system - cpu.children_system
    data["startup"] = data["wall"] - result["seconds"]
    for phase, seconds in result["phases"].items():
        data[phase] = seconds
    data["output_bytes"] = out.stat().st_size
    return data


def run_upstream(model: Path, out: Path, outtype: str) -> dict[str, float]:
    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    out.unlink(missing_ok=True)
    os.sync()
    command = ["env", f"PYTHONPATH={source / 'gguf-py'}", sys.executable]
    command += [str(source / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out)]
    data = measure([*command, "--outtype", outtype])
    if data["rc"] != 0:
        raise SystemExit(f"upstream convert failed (exit {data['rc']})")
    return data


def bench_case(
    case: Case, model: Path, bench: Path, runs: int, anchor_runs: int
) -> tuple[bool, Floor]:
    from ggufkit.formats.origin import known_sha256

    shards = sorted(model.glob("*.safetensors"))
    out = bench / f"out-{case.outtype}.gguf"
    print(f"\n--- {case.name}: {len(shards)} shards, {total_bytes(shards) / MB:.0f} MB ---")
    hashing = not all(known_sha256(f) for f in shards)
    first = run_ggufkit(model, out, case.outtype)  # warm-up: page cache, output size
    note = "hashing the sources for provenance" if hashing else "warm-up"
    print(f"  first run ({note}): {first['wall']:.2f} s, left out")
    output_bytes = int(first["output_bytes"])
    out.unlink()  # not on disk beside the floor's copy

    def one_run() -> dict[str, float]:
        data = run_ggufkit(model, out, case.outtype)
        out.unlink()  # its dirty pages are not the next floor copy's to write
        print(
            f"  ggufkit {data['wall']:6.2f} s  {data['rss_mb']:6.0f} MiB  "
            f"(user {data['user']:.2f} s, system {data['system']:.2f} s)",
            flush=True,
        )
        return data

    floors, ours = paired_runs(shards, output_bytes, bench, case.kernel, runs, one_run)
    theirs = []
    for _ in range(anchor_runs):
        data = run_upstream(model, out, case.outtype)
        theirs.append(data)
        print(f"  upstream {data['wall']:6.2f} s  {data['rss_mb']:6.0f} MiB")
    out.unlink(missing_ok=True)

    def median(key: str, rows: list[dict[str, float]] = ours) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows)

    wall = median("wall")
    floor = min(floors, key=lambda f: f.seconds)
    print(f"  best {floor.describe()}")
    print(
        f"  where ggufkit's {wall:.2f} s went (medians): start-up and imports "
        f"{median('startup'):.2f} s, prepare (config, plans, vocabulary, header) "
        f"{median('prepare'):.2f} s, tensor data {median('data'):.2f} s "
        f"({total_bytes(shards) / MB / max(median('data'), 1e-9):.0f} MB/s), "
        f"finish {median('finish'):.2f} s; CPU user {median('user'):.2f} s + system "
        f"{median('system'):.2f} s on {os.cpu_count()} cores"
    )
    if theirs:
        up_wall, up_rss = median("wall", theirs), max(r["rss_mb"] for r in theirs)
        rss = max(r["rss_mb"] for r in ours)
        print(
            f"  anchor: upstream {up_wall:.2f} s, {up_rss:.0f} MiB; ggufkit {wall:.2f} s, "
            f"{rss:.0f} MiB: {up_wall / wall:.2f}x faster, RSS {rss / up_rss:.2f} of upstream's"
        )
    met = paired_verdict(f"  ggufkit {case.name}", [r["wall"] for r in ours], floors, TARGET)
    return met, floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="3 (1b) or 2 (7b)")
    parser.add_argument("--anchor-runs", type=int, default=1)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    args = parser.parse_args()

    from ggufkit.core import paths

    bench = paths.home() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    names = args.cases or (["bf16-f16"] if args.shape == "7b" else list(CASES))
    runs = args.runs or (2 if args.shape == "7b" else 3)
    results = []
    for name in names:
        case = CASES[name]
        model = ensure_model(bench, args.shape, case.source_dtype)
        results.append((case, *bench_case(case, model, bench, runs, args.anchor_runs)))
    missed = [case.name for case, met, _ in results if not met]
    print(f"\nconvert ({args.shape}): " + ("all within target" if not missed else "MISSED: "))
    for case in missed:
        print(f"  {case}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
