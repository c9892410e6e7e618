"""Benchmark: ggufkit's native converter vs the pinned upstream convert_hf_to_gguf.py.

A ~1B-parameter LLaMA (random bf16 weights, fixed seed, 2 safetensors shards) is generated once
under GGUFKIT_HOME/bench with numpy (``tests/tiny.py:write_random_llama``), then converted to f16
by both, alternating, each run in a fresh process whose peak RSS is read with
getrusage(RUSAGE_CHILDREN). A page-cache copy of the same bytes is the floor. ggufkit's first run
also hashes the source files (sha256, for the provenance keys); later runs find them cached.

    .venv/bin/python benchmarks/bench_convert.py [--runs 3] [--layers 16] [--threads N]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Run a command in a fresh child; report wall time and the child's peak RSS.
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
seconds = time.perf_counter() - started
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "seconds": seconds, "rss_mib": rss_kib / 1024}))
"""


def measure(command: list[str]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    if data["code"] != 0:
        raise SystemExit(f"{command[:3]} failed with exit code {data['code']}")
    return data


def page_cache_copy(files: list[Path], out: Path) -> float:
    started = time.perf_counter()
    with open(out, "wb") as target:
        for file in files:
            with open(file, "rb") as source:
                shutil.copyfileobj(source, target, 16 * 1024 * 1024)
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from tiny import write_random_llama

    from ggufkit.core import paths
    from ggufkit.formats.origin import known_sha256
    from ggufkit.llamacpp.source import ensure_source

    bench = paths.home() / "bench"
    model = bench / f"llama-bf16-{args.layers}l"
    if not (model / "config.json").is_file():
        print(f"generating the benchmark model in {model} ...", flush=True)
        write_random_llama(model.with_name(model.name + ".tmp"), layers=args.layers)
        shutil.rmtree(model, ignore_errors=True)
        os.replace(model.with_name(model.name + ".tmp"), model)
    shards = sorted(model.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in shards)
    source = ensure_source()
    out = bench / "out.gguf"
    ours = [str(ROOT / ".venv" / "bin" / "ggufkit"), "-q", "convert", str(model), "-o", str(out)]
    ours += ["--force"] + (["--threads", str(args.threads)] if args.threads else [])
    upstream = [
        "env",
        f"PYTHONPATH={source / 'gguf-py'}",
        sys.executable,
        str(source / "convert_hf_to_gguf.py"),
        str(model),
        "--outfile",
        str(out),
        "--outtype",
        "f16",
    ]
    page_cache_copy(shards, out)  # warm the page cache
    floor = min(page_cache_copy(shards, out) for _ in range(3))
    results: dict[str, list[dict[str, float]]] = {"ggufkit": [], "upstream": []}
    for run in range(args.runs):
        for name, command in (("ggufkit", ours), ("upstream", upstream)):
            cached = name == "ggufkit" and all(known_sha256(f) for f in shards)
            data = measure(command)
            results[name].append(data)
            out.unlink(missing_ok=True)
            note = "" if name != "ggufkit" else " (sha256 cached)" if cached else " (hashing)"
            print(
                f"run {run + 1} {name:9s} {data['seconds']:6.2f} s  "
                f"{data['rss_mib']:7.0f} MiB{note}"
            )
    mb = size / 1e6
    print(f"\nmodel: {len(shards)} shards, {mb:.0f} MB bf16 ({model})")
    print(f"page-cache copy (floor): {floor:.2f} s, {mb / floor:.0f} MB/s")
    summary = {}
    for name, runs in results.items():
        secs = statistics.median(r["seconds"] for r in runs)
        rss = max(r["rss_mib"] for r in runs)
        summary[name] = (secs, rss)
        print(f"{name:9s} median {secs:6.2f} s  {mb / secs:6.0f} MB/s  peak RSS {rss:6.0f} MiB")
    (ours_s, ours_rss), (up_s, up_rss) = summary["ggufkit"], summary["upstream"]
    print(f"speed-up {up_s / ours_s:.2f}x   RSS ratio {ours_rss / up_rss:.2f} (ggufkit/upstream)")


if __name__ == "__main__":
    main()
