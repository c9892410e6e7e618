"""Python start-up facts a benchmark of a quick command reports: whether the modules it imports
have up-to-date bytecode (``.pyc``) or are compiled from source on every start, and where
``python -X importtime`` says the import time goes.

A module without a valid ``.pyc`` in its ``__pycache__`` is compiled in memory on every start;
``PYTHONDONTWRITEBYTECODE`` (set on some machines) stops Python from saving the result, so the
cost recurs. pip compiles what it installs; an editable install leaves the checkout's modules
uncompiled until something compiles them (``make install`` does, with ``compileall``).
"""

from __future__ import annotations

import compileall
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Run in a fresh interpreter: the source file and the bytecode file of every module that importing
# MODULES (and resolving COMMAND through the CLI) loads.
_LIST_MODULES = """
import importlib, json, sys
import click
from ggufkit.cli import cli
cli.get_command(click.Context(cli), sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
rows = []
for module in list(sys.modules.values()):
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.origin and spec.origin.endswith(".py") and spec.cached:
        rows.append([spec.name, spec.origin, spec.cached])
print(json.dumps(rows))
"""


@dataclass(frozen=True)
class Bytecode:
    """The bytecode state of the modules a command imports."""

    modules: int
    stale: tuple[Path, ...]  # sources without an up-to-date .pyc
    stale_ours: int  # of which ggufkit's own

    def describe(self) -> str:
        if not self.stale:
            return f"all {self.modules} modules it imports have an up-to-date .pyc"
        return (
            f"{len(self.stale)} of the {self.modules} modules it imports have no up-to-date .pyc "
            f"({self.stale_ours} of them ggufkit's): compiled from source on every start"
        )


def pyc_is_fresh(source: Path, cached: Path) -> bool:
    """Whether ``cached`` is bytecode the import system would load for ``source`` as it is."""
    try:
        with open(cached, "rb") as handle:
            header = handle.read(16)
        stat = source.stat()
    except OSError:
        return False
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(header[4:8], "little")
    if flags & 1:  # hash-based: checked against the source's hash, or never checked
        return not flags & 2 or header[8:16] == importlib.util.source_hash(source.read_bytes())
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return mtime == int(stat.st_mtime) & 0xFFFFFFFF and size == stat.st_size & 0xFFFFFFFF


def command_bytecode(python: str, command: str, modules: Sequence[str]) -> Bytecode:
    """The bytecode state of what ``ggufkit COMMAND`` imports (``modules``: those it imports
    lazily when it runs)."""
    done = subprocess.run(
        # -P: the modules the console script would import, not those of the current directory
        [python, "-P", "-c", _LIST_MODULES, command, *modules],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout)
    stale = [
        (name, Path(origin))
        for name, origin, cached in rows
        if not pyc_is_fresh(Path(origin), Path(cached))
    ]
    return Bytecode(
        len(rows),
        tuple(path for _, path in stale),
        sum(name.split(".")[0] == "ggufkit" for name, _ in stale),
    )


def precompile(files: Sequence[Path]) -> bool:
    """Write the ``.pyc`` of ``files`` (as pip or ``make install`` would); True when all compiled."""
    return all(compileall.compile_file(str(f), quiet=2, force=True) for f in files)


def bytecode_env() -> str:
    value = os.environ.get("PYTHONDONTWRITEBYTECODE")
    if value:
        return (
            f"PYTHONDONTWRITEBYTECODE={value} is set: Python saves no .pyc, so a module without "
            "one is compiled again on every start"
        )
    return "PYTHONDONTWRITEBYTECODE is not set: Python saves the .pyc of what it compiles"


@dataclass(frozen=True)
class ImportTimes:
    total_us: int  # the sum of every module's own time
    ours_us: int  # ggufkit's modules' own time
    count: int
    top: tuple[tuple[str, int], ...]  # top-level imports, by cumulative time

    def describe(self, limit: int = 8) -> str:
        head = ", ".join(f"{name} {us / 1000:.1f}" for name, us in self.top[:limit])
        return (
            f"python -X importtime: {self.count} modules, {self.total_us / 1000:.1f} ms in all "
            f"(ggufkit's own modules {self.ours_us / 1000:.1f} ms; importtime itself inflates "
            f"these); largest top-level imports (ms, cumulative): {head}"
        )


def import_times(command: Sequence[str]) -> ImportTimes:
    """Run ``python -X importtime`` + ``command`` (a Python script and its arguments) once."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command], capture_output=True, text=True, check=True
    )
    total = ours = count = 0
    top: list[tuple[str, int]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        count += 1
        total += int(own)
        if name.strip().split(".")[0] == "ggufkit":
            ours += int(own)
        if not name[1:].startswith(" "):  # imported at top level, not by another import
            top.append((name.strip(), int(cumulative)))
    top.sort(key=lambda item: -item[1])
    return ImportTimes(total, ours, count, tuple(top))
