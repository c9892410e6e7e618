"""Opt-in benchmark (`make bench-portable`, not part of `make bench`): the --portable build
against the native one, both cold, in the same run.

Each side builds into a fresh GGUFKIT_HOME (the verified sdist is copied in, so nothing is
fetched), then measures: the cold build time, llama-bench's prompt and generation speed on a
q4_0 model (a ~1B random LLaMA, as bench_quantize.py writes it, quantized by each build), and
that llama-cpp-python loads the build and evaluates a few tokens (the portable build must find
its CPU variants through GGML_BACKEND_DIR, not beside Python's executable). Prints the ratios.
On 2 cores expect 25 minutes or more: the portable build compiles about 14 CPU variants.

    .venv/bin/python benchmarks/portable_build.py [--layers 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quantize import make_model

GGUFKIT = [sys.executable, "-m", "ggufkit"]

PROBE = """
import json, os, sys
from ggufkit.llamacpp.bindings import load_llama_cpp
llama_cpp = load_llama_cpp()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=2, verbose=False)
tokens = llm.tokenize(b"To be, or not to be", add_bos=True)
llm.eval(tokens)
print(json.dumps({"lib": os.environ["LLAMA_CPP_LIB_PATH"], "evaluated": llm.n_tokens}))
"""


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True)


def measure(label: str, flags: list[str], home: Path, model: Path) -> dict[str, object]:
    from ggufkit.llamacpp.source import fetch_sdist, read_pin

    (home / "downloads").mkdir(parents=True)
    shutil.copy2(fetch_sdist(read_pin()), home / "downloads")
    env = {**os.environ, "GGUFKIT_HOME": str(home), "GGUFKIT_NO_PROGRESS": "1"}
    print(f"[{label}] cold build {' '.join(flags) or '(native)'} ...", flush=True)
    started = time.perf_counter()
    built = json.loads(run([*GGUFKIT, "build", "--json", *flags], env).stdout)
    build_seconds = time.perf_counter() - started
    bin_dir = Path(built["lib_dir"])
    variants = sorted(p.name for p in bin_dir.glob("*ggml-cpu*"))
    quantized = home / "model-Q4_0.gguf"
    run([built["tools"]["llama-quantize"], str(model), str(quantized), "q4_0", "2"], env)
    bench = run(
        [
            built["tools"]["llama-bench"],
            "-m",
            str(quantized),
            "-t",
            "2",
            "-p",
            "128",
            "-n",
            "32",
            "-r",
            "3",
            "-o",
            "json",
        ],
        env,
    )
    speeds = {
        ("prompt" if row["n_prompt"] else "generation"): float(row["avg_ts"])
        for row in json.loads(bench.stdout)
    }
    probe = json.loads(run([sys.executable, "-c", PROBE, str(quantized)], env).stdout)
    loaded = re.findall(r"loaded CPU backend from (\S+)", bench.stderr)
    result = {
        "build_seconds": round(build_seconds, 1),
        "cpu_libraries": variants,
        "cpu_backend_loaded": loaded[-1] if loaded else "linked in (native)",
        "tokens_per_second": speeds,
        "bindings": probe,
    }
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="build under this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ggufkit-bench-portable-"))
    model = make_model(root / "model-f16.gguf", layers=args.layers)
    try:
        native = measure("native", [], root / "native", model)
        portable = measure("portable", ["--portable"], root / "portable", model)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    build_ratio = float(portable["build_seconds"]) / float(native["build_seconds"])  # type: ignore[arg-type]
    print(f"cold build: portable {portable['build_seconds']} s vs native "
          f"{native['build_seconds']} s = {build_ratio:.2f}x")  # fmt: skip
    for kind, value in native["tokens_per_second"].items():  # type: ignore[attr-defined]
        other = portable["tokens_per_second"][kind]  # type: ignore[index]
        print(f"q4_0 {kind}: portable {other:.1f} t/s vs native {value:.1f} t/s "
              f"= {other / value:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
