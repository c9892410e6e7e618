"""`make bench`: run every benchmarks/bench_*.py in turn; each compares against its floor or its
anchor in the same run, prints the ratios and holds its targets as its exit code.

    .venv/bin/python benchmarks/run_all.py [--with-7b] [bench_x.py ...]

``--with-7b`` adds the LLaMA-7B-shaped convert benchmark (``bench_convert.py --shape 7b``): about
30 GB of disk and several minutes. Exit status: non-zero if any benchmark failed or missed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    with_7b = "--with-7b" in argv
    selected = [a for a in argv if a != "--with-7b"]
    runs = [[name] for name in selected or sorted(p.name for p in here.glob("bench_*.py"))]
    if with_7b:
        runs.append(["bench_convert.py", "--shape", "7b"])
    failures = []
    for name, *args in runs:
        label = " ".join([name, *args])
        print(f"\n=== {label} ===", flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(here / name), *args], check=False)
        print(
            f"=== {label}: exit {result.returncode} in {time.perf_counter() - started:.0f} s ===",
            flush=True,
        )
        if result.returncode != 0:
            failures.append(label)
    if failures:
        print("failed or missed a target: " + ", ".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
