"""What every benchmark shares: a fresh-process measurement, and the floor of a step.

The floor of a step is the larger of two figures measured in the same run as the step itself:

- **copy**: reading its input bytes through the page cache and writing its output bytes to a new
  file beside the output (the least any tool must do to turn those inputs into that output);
- **kernel**: the fastest in-memory conversion available in-process over the same bytes: torch's
  vectorised casts (and adds, for a merge) on every core, chunk by chunk.

A copy alone would make a target depend on the CPU (a slow core converts slower than it copies);
a kernel alone ignores the I/O. Where input plus output exceed the RAM the copy is disk-bound, and
``Floor.describe`` says so. Targets are held as exit codes by the benchmarks, never in tests.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
CHUNK = 16 * 1024 * 1024  # bytes per read/write in the copy floor

# Runs a command with its output in a log file (or discarded); prints wall time and peak RSS.
_WRAPPER = """
import json, resource, subprocess, sys, time
log = open(sys.argv[1], "w") if sys.argv[1] else subprocess.DEVNULL
started = time.perf_counter()
rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "rss_mb": usage.ru_maxrss / 1024,
                  "user": usage.ru_utime, "sys": usage.ru_stime}))
"""


def measure(command: Sequence[str], log: Path | None = None) -> dict[str, float]:
    """Run ``command`` in a fresh process (itself started by a fresh wrapper, so the peak RSS is
    this run's alone); wall seconds, peak RSS in MiB, CPU seconds (user, sys) and the exit
    code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GGUFKIT_NO_PROGRESS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(log or ""), *command],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read ``files`` once, so that every run finds them in the page cache."""
    buffer = bytearray(CHUNK)
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def total_bytes(files: Sequence[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def copy_seconds(inputs: Sequence[Path], output_bytes: int, scratch: Path) -> float:
    """One pass: read every input byte, write ``output_bytes`` to a new file in ``scratch``."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    target = scratch / f"floor-copy.{os.getpid()}.tmp"
    left = output_bytes
    started = time.perf_counter()
    with open(target, "wb", buffering=0) as out:
        for file in inputs:
            with open(file, "rb", buffering=0) as handle:
                while n := handle.readinto(buffer):
                    if left > 0:
                        left -= out.write(view[: min(n, left)])
        while left > 0:  # an output larger than the inputs (e.g. f16 -> f32)
            left -= out.write(view[: min(CHUNK, left)])
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def _torch():  # type: ignore[no-untyped-def]
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def kernel_seconds(kind: str, input_bytes: int) -> float | None:
    """torch's in-memory kernel for ``kind`` over ``input_bytes`` of input, on every core:

    - ``bf16-f16``: a bf16 -> f16 cast; ``f16-f16``: a copy; ``f32-q8_0``: none in torch (None);
    - ``merge-bf16``: two bf16 inputs cast to f16 and added in f16 (what merge-delta computes).

    Measured on 64 MiB chunks of random values, as the best of three passes. None without torch.
    """
    torch = _torch()
    if torch is None or kind == "f32-q8_0":
        return None
    elements = 32 * 1024 * 1024  # one chunk: 64 MiB of bf16/f16
    generator = torch.Generator().manual_seed(0)
    a = (torch.randn(elements, generator=generator) * 0.02).to(torch.bfloat16)
    b = (torch.randn(elements, generator=generator) * 0.002).to(torch.bfloat16)
    half = a.to(torch.float16)
    out = torch.empty(elements, dtype=torch.float16)
    chunk_bytes = 2 * elements * (2 if kind == "merge-bf16" else 1)
    passes = max(1, -(-input_bytes // chunk_bytes))

    def one_pass() -> float:
        started = time.perf_counter()
        for _ in range(passes):
            if kind == "bf16-f16":
                out.copy_(a)
            elif kind == "f16-f16":
                out.copy_(half)
            elif kind == "merge-bf16":
                torch.add(a.to(torch.float16), b.to(torch.float16), out=out)
            else:
                raise ValueError(f"unknown kernel kind {kind!r}")
        return (time.perf_counter() - started) * input_bytes / (passes * chunk_bytes)

    one_pass()
    return min(one_pass() for _ in range(3))


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Floor:
    """The floor of one step: the larger of its copy and kernel parts (seconds)."""

    copy: float
    kernel: float | None
    input_bytes: int
    output_bytes: int

    @property
    def seconds(self) -> float:
        return max(self.copy, self.kernel or 0.0)

    @property
    def disk_bound(self) -> bool:
        ram = memory_bytes()
        return ram is not None and self.input_bytes + self.output_bytes > ram

    def describe(self) -> str:
        kernel = "n/a" if self.kernel is None else f"{self.kernel:.2f} s"
        which = "copy" if self.copy >= (self.kernel or 0.0) else "kernel"
        disk = " (input + output exceed the RAM: disk-bound)" if self.disk_bound else ""
        return (
            f"floor {self.seconds:.2f} s = max(copy {self.copy:.2f} s "
            f"[read {self.input_bytes / MB:.0f} MB + write {self.output_bytes / MB:.0f} MB], "
            f"kernel {kernel}): {which}-bound{disk}"
        )


def measure_floor(
    inputs: Sequence[Path], output_bytes: int, scratch: Path, kind: str, *, repeat: int = 3
) -> Floor:
    """The floor of a step reading ``inputs`` and writing ``output_bytes`` (best of ``repeat``)."""
    warm_page_cache(inputs)
    copy = min(copy_seconds(inputs, output_bytes, scratch) for _ in range(repeat))
    size = total_bytes(inputs)
    return Floor(copy, kernel_seconds(kind, size), size, output_bytes)


def paired_runs(
    inputs: Sequence[Path],
    output_bytes: int,
    scratch: Path,
    kind: str,
    runs: int,
    step: Callable[[], dict[str, float]],
) -> tuple[list[Floor], list[dict[str, float]]]:
    """``runs`` pairs of (copy floor, ``step()``) back to back, so that both halves of a pair meet
    the same machine (page cache, writeback, other load); the kernel part is measured once."""
    warm_page_cache(inputs)
    size = total_bytes(inputs)
    kernel = kernel_seconds(kind, size)
    floors, results = [], []
    for _ in range(runs):
        floors.append(
            Floor(copy_seconds(inputs, output_bytes, scratch), kernel, size, output_bytes)
        )
        results.append(step())
    return floors, results


def paired_verdict(
    label: str, walls: Sequence[float], floors: Sequence[Floor], target: float
) -> bool:
    """The median of the per-pair ratios against ``target``; True when met."""
    ratios = [wall / floor.seconds for wall, floor in zip(walls, floors, strict=True)]
    ratio = statistics.median(ratios)
    met = ratio <= target
    print(
        f"{label}: median {statistics.median(walls):.2f} s against a median floor of "
        f"{statistics.median(f.seconds for f in floors):.2f} s; ratio per pair "
        f"{', '.join(f'{r:.2f}' for r in ratios)}: median {ratio:.2f}x; "
        f"target <= {target:.2f}x: {'met' if met else 'MISSED'}"
    )
    return met


def verdict(label: str, seconds: float, floor: Floor, target: float) -> bool:
    """Print ``label``'s ratio to its floor against ``target``; True when met."""
    ratio = seconds / floor.seconds
    met = ratio <= target
    print(
        f"{label}: {seconds:.2f} s = {ratio:.2f}x its floor ({floor.seconds:.2f} s); "
        f"target <= {target:.2f}x: {'met' if met else 'MISSED'}"
    )
    return met
