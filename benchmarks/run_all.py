"""`make bench`: run every benchmarks/bench_*.py in turn; each compares against its anchor and
prints the ratios. Exit status: non-zero if any benchmark failed to run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    selected = argv or sorted(p.name for p in here.glob("bench_*.py"))
    failures = []
    for name in selected:
        script = here / name
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(script)], check=False)
        print(
            f"=== {name}: exit {result.returncode} in {time.perf_counter() - started:.0f} s ===",
            flush=True,
        )
        if result.returncode != 0:
            failures.append(name)
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
