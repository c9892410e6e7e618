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
from ggufkit.formats.ggufinfo import GGUFInfo, ggml_type_by_name

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
    bits_per_weight: float | None  # of the main tensor format's blocks
    alias_of: str | None = None
    mix_bits_per_weight: float | None = None  # of a whole file (quantize.mix_bpw), when measured

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
            guesses = [g for u in unknown for g in self.close_to(u)]
            raise UsageError(
                f"unknown quantization type{'s' if len(unknown) > 1 else ''}: "
                + ", ".join(repr(u) for u in unknown),
                hint=(f"did you mean {_or(list(dict.fromkeys(guesses)))}? " if guesses else "")
                + f"`ggufkit quantize --list` shows all {len(self.types)} with bits per weight",
            )
        return resolved

    def close_to(self, name: str) -> list[str]:
        """The types spelled most like ``name`` (lower case, as users type them)."""
        import difflib

        wanted = name.strip().upper().replace("-", "_")
        if self.get(wanted) is not None:  # "q4-k-m"
            return [wanted.lower()]
        return [m.lower() for m in difflib.get_close_matches(wanted, self.names, n=3, cutoff=0.6)]


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


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
    """The human ``--list`` output: name, the mix's bits per weight (measured) and the block's,
    upstream's note."""
    width = max(len(t.name) for t in table.types)
    measured = any(t.mix_bits_per_weight for t in table.types)
    lines = [f"{'TYPE':<{width}}  {'MIX':>5}  {'BLOCK':>5}  NOTE"]
    for quant_type in table.types:
        mix = quant_type.mix_bits_per_weight
        block = quant_type.bits_per_weight
        lines.append(
            f"{quant_type.name:<{width}}  {f'{mix:5.2f}' if mix else f'{chr(45):>5}'}  "
            f"{f'{block:5.2f}' if block else f'{chr(45):>5}'}  {quant_type.note}".rstrip()
        )
    lines.append(f"({len(table.types)} types, from {table.source})")
    if measured:
        lines.append(
            "MIX: bits per weight of a whole file of this type, as llama-quantize --dry-run "
            "computes it for a Llama-3-8B-shaped model on this build (k-quant mixes keep some "
            "tensors wider; small or odd-shaped models differ). BLOCK: the main tensor format's."
        )
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


# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): a tensor whose rows are not a multiple of
# its type's block is stored in a 32-block type instead (the target -> what it stands for), or in
# F16 where even 32 does not divide the rows.
FALLBACK_FOR = {
    "Q4_0": "Q2_K/Q3_K",
    "Q5_0": "Q4_K",
    "Q5_1": "Q5_K",
    "Q8_0": "Q6_K",
    "IQ4_NL": "IQ*",
    "F16": "any",
}
K_BLOCK = 256  # QK_K: the block of the k-quants and the i-quants
LEGACY_BLOCK = 32


@dataclass(frozen=True)
class TensorMix:
    """What a GGUF's tensors are really stored in, and which fell back from the requested mix.

    ``counts``: tensors per ggml type, most first. ``fallback``: tensors per fallback type (see
    :data:`FALLBACK_FOR`) whose rows do not fit the mix's block; ``rows``: those row lengths.
    """

    file_type: str | None  # general.file_type as llama.cpp names it ("Q4_K_M")
    counts: tuple[tuple[str, int], ...]
    total: int
    fallback: tuple[tuple[str, int], ...] = ()
    rows: tuple[int, ...] = ()
    block: int = K_BLOCK

    @property
    def fallback_count(self) -> int:
        return sum(n for _, n in self.fallback)

    def counts_text(self) -> str:
        """``Q5_0 ×166, Q4_K ×16, Q8_0 ×15, Q6_K ×14``."""
        return ", ".join(f"{name} ×{n}" for name, n in self.counts)

    def note(self) -> str | None:
        """A plain sentence when tensors fell back, else None: ``Q4_K_M: 166 of 211 tensors fell
        back to Q5_0: rows of 576 are not a multiple of 256``."""
        if not self.fallback:
            return None
        targets = "(" + " and ".join(f"{n} to {name}" for name, n in self.fallback) + ")"
        if len(self.fallback) == 1:
            targets = f"to {self.fallback[0][0]}"
        rows = ", ".join(str(r) for r in self.rows)
        return (
            f"{self.file_type or 'this mix'}: {self.fallback_count} of {self.total} tensors fell "
            f"back {targets}: rows of {rows} are not a multiple of {self.block}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "tensor_types": dict(self.counts),
            "fallback": None
            if not self.fallback
            else {
                "count": self.fallback_count,
                "types": dict(self.fallback),
                "row_lengths": list(self.rows),
                "block": self.block,
                "note": self.note(),
            },
        }


def _main_type(file_type: str | None) -> str | None:
    """A quantized mix's main ggml type (``Q4_K_M`` -> ``Q4_K``); None for a plain or unknown
    file type (F16, BF16, F32: nothing falls back there)."""
    if not file_type or file_type in ("F16", "BF16", "F32"):
        return None
    for candidate in (file_type, file_type.rsplit("_", 1)[0]):
        if ggml_type_by_name(candidate) is not None:
            return candidate.upper()
    return file_type


def tensor_mix(info: GGUFInfo) -> TensorMix:
    """The real tensor types of a GGUF and what fell back, from its tensor table alone.

    A tensor fell back when the file is quantized (``general.file_type``) and the tensor is stored
    in one of llama.cpp's fallback types other than the mix's own main type, with rows that are no
    multiple of 256 (F16: of 32): exactly where llama-quantize prints "... not divisible by 256
    ... falling back to q5_0", and where it stores output.weight in Q8_0 straight away for
    such rows (without counting it). A type forced with --output-tensor-type or
    --token-embedding-type onto such rows counts too.
    """
    counts = tuple(sorted(info.tensor_types.items(), key=lambda item: (-item[1], item[0])))
    file_type = info.file_type_name
    main = _main_type(file_type)
    fell: dict[str, int] = {}
    rows: set[int] = set()
    legacy = False
    if main is not None:
        for tensor in info.tensors:
            kind = tensor.type_name
            if len(tensor.shape) < 2 or kind not in FALLBACK_FOR or kind == main:
                continue
            row = tensor.shape[0]
            if row % (LEGACY_BLOCK if kind == "F16" else K_BLOCK) != 0:
                fell[kind] = fell.get(kind, 0) + 1
                rows.add(row)
                legacy = legacy or kind != "F16"
    return TensorMix(
        file_type=file_type,
        counts=counts,
        total=len(info.tensors),
        fallback=tuple(sorted(fell.items(), key=lambda item: (-item[1], item[0]))),
        rows=tuple(sorted(rows)),
        block=K_BLOCK if legacy or not fell else LEGACY_BLOCK,
    )


def read_tensor_mix(path: Path) -> TensorMix:
    """:func:`tensor_mix` of a GGUF file (or split set), reading its header only."""
    from ggufkit.formats.gguf_reader import read_gguf

    return tensor_mix(read_gguf(path, max_array_items=0))
