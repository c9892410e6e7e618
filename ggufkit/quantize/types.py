"""The quantization types the pinned llama.cpp offers, read from the build itself.

The table comes from ``llama-quantize --help`` (name, llama_ftype number and upstream's one-line
note), cached per binary, so it never drifts from the build.
Bits per weight: the figure the note states ("2.06 bpw"), else that of the type's main tensor
format from ggml's block sizes (``Q4_K_M`` -> ``Q4_K``, 4.5); mixes keep some tensors wider.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ggufkit.core import paths
from ggufkit.core.errors import ToolFailedError, UsageError
from ggufkit.core.fsutil import read_keyed_json, write_keyed_json
from ggufkit.core.log import get_logger
from ggufkit.formats.ggufinfo import ggml_type_by_name

log = get_logger("quantize")

COPY = "COPY"
CACHE_VERSION = 2
# "  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B" and "          COPY    : only copy ..."
_ROW = re.compile(r"^\s*(?:(?P<ftype>\d+)\s+or\s+)?(?P<name>[A-Z][A-Z0-9_]*)\s*:\s?(?P<desc>.*)$")
_BPW = re.compile(r"(\d+(?:\.\d+)?)\s*bpw")
_ALIAS = re.compile(r"alias for (\S+)")


@dataclass(frozen=True)
class QuantType:
    """One type ``llama-quantize`` accepts. ``ftype`` is llama.cpp's number (None for COPY)."""

    name: str  # canonical upper case, as llama.cpp spells it: "Q4_K_M"
    ftype: int | None
    note: str
    bits_per_weight: float | None
    alias_of: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TypeTable:
    types: tuple[QuantType, ...]
    source: str  # "llama-quantize --help"

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.types]

    def get(self, name: str) -> QuantType | None:
        wanted = name.strip().upper()
        for quant_type in self.types:
            if quant_type.name == wanted:
                return quant_type
        return None

    def resolve(self, names: Iterable[str]) -> list[QuantType]:
        """Case-insensitive look-up, duplicates dropped; unknown names are a UsageError."""
        resolved: list[QuantType] = []
        unknown: list[str] = []
        for name in names:
            found = self.get(name)
            if found is None:
                unknown.append(name)
            elif found not in resolved:
                resolved.append(found)
        if unknown:
            raise UsageError(
                f"unknown quantization type{'s' if len(unknown) > 1 else ''}: "
                + ", ".join(repr(u) for u in unknown),
                hint=f"choose from: {', '.join(n.lower() for n in self.names)} "
                "(`ggufkit quantize --list` shows them with bits per weight)",
            )
        return resolved


def nominal_bpw(name: str, note: str = "") -> float | None:
    """Bits per weight: as the note states it, else from the main ggml tensor type's block size."""
    stated = _BPW.search(note)
    if stated:
        return float(stated.group(1))
    candidates = [name]
    if "_" in name:
        candidates.append(name.rsplit("_", 1)[0])  # Q4_K_M -> Q4_K, MXFP4_MOE -> MXFP4
    for candidate in candidates:
        ggml_type = ggml_type_by_name(candidate)
        if ggml_type is not None:
            return round(ggml_type.bits_per_weight, 4)
    return None


def parse_help(text: str) -> list[QuantType]:
    """The 'allowed quantization types' block of ``llama-quantize --help``."""
    marker = text.find("allowed quantization types")
    if marker < 0:
        return []
    types: list[QuantType] = []
    for line in text[marker:].splitlines()[1:]:
        match = _ROW.match(line)
        if not match:
            continue
        name, note = match.group("name"), match.group("desc").strip()
        ftype = int(match.group("ftype")) if match.group("ftype") else None
        alias = _ALIAS.search(note)
        types.append(
            QuantType(
                name=name,
                ftype=ftype,
                note=note,
                bits_per_weight=None if name == COPY else nominal_bpw(name, note),
                alias_of=alias.group(1) if alias else None,
            )
        )
    return types


def table_from_binary(binary: Path) -> TypeTable:
    """Run ``llama-quantize --help`` (it exits 1 after printing) and parse it; cached per binary
    (its path, size and mtime), so a quantize runs no other process than the quantization."""
    stat = binary.stat()
    key = f"{CACHE_VERSION}:{binary.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = paths.cache_file("quantize-types", key)
    data = read_keyed_json(cache, key)
    if isinstance(data, dict):
        try:
            return TypeTable(tuple(QuantType(**row) for row in data["types"]), data["source"])
        except (KeyError, TypeError):  # another version's shape: ask the binary again
            pass
    try:
        done = subprocess.run(
            [str(binary), "--help"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolFailedError(
            f"cannot run {binary} --help: {exc}", hint="run `ggufkit build --force`"
        ) from exc
    types = parse_help(done.stdout + done.stderr)
    if not types:
        raise ToolFailedError(
            f"{binary.name} --help printed no list of quantization types",
            hint="the build may be broken: run `ggufkit build --force`",
            tail="\n".join((done.stdout + done.stderr).strip().splitlines()[-10:]),
        )
    table = TypeTable(tuple(types), f"{binary.name} --help")
    write_keyed_json(cache, key, {"source": table.source, "types": [t.to_json() for t in types]})
    return table


def format_table(table: TypeTable) -> str:
    """The human ``--list`` output: name, bits per weight, upstream's note."""
    width = max(len(t.name) for t in table.types)
    lines = [f"{'TYPE':<{width}}  {'BPW':>6}  NOTE"]
    for quant_type in table.types:
        bpw = f"{quant_type.bits_per_weight:6.2f}" if quant_type.bits_per_weight else f"{'-':>6}"
        lines.append(f"{quant_type.name:<{width}}  {bpw}  {quant_type.note}".rstrip())
    lines.append(f"({len(table.types)} types, from {table.source})")
    return "\n".join(lines)


# Trailing "-f16", "_Q8_0", ".bf16" ... on a file stem: the precision it is stored in.
def output_stem(input_path: Path, type_names: Sequence[str]) -> str:
    """The stem outputs are named after: the input's, minus a trailing precision/type suffix.

    ``my-model-f16.gguf`` -> ``my-model``; ``my-model-Q8_0.gguf`` -> ``my-model``.
    """
    name = input_path.name
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else input_path.stem
    suffixes = sorted(
        {n.upper() for n in type_names} | {"F16", "F32", "BF16"}, key=len, reverse=True
    )
    upper = stem.upper()
    for suffix in suffixes:
        for separator in "-_.":
            tail = separator + suffix
            if upper.endswith(tail) and len(stem) > len(tail):
                return stem[: -len(tail)]
    return stem


def output_name(input_path: Path, quant_type: str, type_names: Sequence[str]) -> str:
    """``<stem>-<TYPE>.gguf``: ``my-model-f16.gguf`` quantized to q4_0 -> ``my-model-Q4_0.gguf``."""
    return f"{output_stem(input_path, type_names)}-{quant_type.upper()}.gguf"
