"""Split GGUF sets, llama.cpp's convention (``llama-gguf-split``, ``llama_split_path``).

A model cut into N files is ``NAME-00001-of-0000N.gguf`` … ``NAME-0000N-of-0000N.gguf``. Every
shard carries ``split.no`` (0-based, uint16), ``split.count`` (uint16) and
``split.tensors.count`` (int32, the whole model's tensors); the first shard alone carries the
model's metadata. The first shard stands for the model: llama.cpp opens the rest itself, and
:func:`ggufkit.formats.gguf_reader.read_gguf` lists every shard's tensors.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core.errors import GGUFFormatError, UsageError

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SIZE = re.compile(r"^(?P<n>[1-9]\d*)(?P<unit>[MG])$")


@dataclass(frozen=True)
class SplitLimits:
    """Where to cut: at most ``max_bytes`` of tensor data or ``max_tensors`` tensors a shard
    (one of them, as ``llama-gguf-split`` takes one)."""

    max_bytes: int | None = None
    max_tensors: int | None = None

    @property
    def active(self) -> bool:
        return self.max_bytes is not None or self.max_tensors is not None

    def tool_args(self) -> list[str]:
        """The ``llama-gguf-split`` options for these limits."""
        if self.max_tensors is not None:
            return ["--split-max-tensors", str(self.max_tensors)]
        assert self.max_bytes is not None
        return ["--split-max-size", _size_text(self.max_bytes)]


def parse_size(text: str) -> int:
    """``50G`` or ``2M`` in bytes, decimal units as ``llama-gguf-split`` reads them."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise UsageError(
            f"bad split size {text!r}",
            hint="give a positive whole number with M or G, e.g. 2M or 50G (decimal units)",
        )
    return int(match["n"]) * (1000**2 if match["unit"] == "M" else 1000**3)


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes // 1000**3}G" if n_bytes % 1000**3 == 0 else f"{n_bytes // 1000**2}M"


def split_limits(max_size: str | None, max_tensors: int | None) -> SplitLimits:
    """The limits from the command-line options (``--split-max-size``, ``--split-max-tensors``)."""
    if max_size is not None and max_tensors is not None:
        raise UsageError(
            "--split-max-size and --split-max-tensors cannot be combined",
            hint="give one of them (llama-gguf-split takes one)",
        )
    if max_tensors is not None and max_tensors < 1:
        raise UsageError(f"--split-max-tensors must be at least 1, got {max_tensors}")
    return SplitLimits(parse_size(max_size) if max_size is not None else None, max_tensors)


def shard_path(path: Path, index: int, count: int) -> Path:
    """Shard ``index`` (0-based) of ``count`` for the unsplit name ``path`` (``x.gguf``)."""
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return path.with_name(f"{stem}-{index + 1:05d}-of-{count:05d}.gguf")


def shard_paths(path: Path, count: int) -> list[Path]:
    return [shard_path(path, i, count) for i in range(count)]


def split_set(path: Path) -> list[Path]:
    """Every file of the model ``path`` stands for: the shards when it is a first shard by name,
    else itself. A shard after the first, or a set with a file missing, is an error."""
    match = _SHARD.match(path.name)
    if match is None:
        return [path]
    no, count = int(match["no"]), int(match["count"])
    if no != 1:
        first = path.with_name(f"{match['stem']}-00001-of-{count:05d}.gguf")
        raise UsageError(
            f"{path} is shard {no} of {count}, not the first of its set",
            hint=f"give the first shard, {first.name}: it stands for the whole model",
        )
    files = [
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise GGUFFormatError(
            f"the split set of {path.name} lacks {shown}",
            hint="copy the missing shards beside the first one",
            path=path,
        )
    return files


def plan_shards(sizes: Sequence[int], limits: SplitLimits) -> list[range]:
    """Tensor index ranges, one per shard, cut as ``llama-gguf-split`` cuts (``sizes``: each
    tensor's padded data size). A tensor larger than the size limit gets a shard of its own."""
    if not sizes:
        return [range(0)]
    starts = [0]
    current = 0
    for i, size in enumerate(sizes):
        if limits.max_tensors is not None:
            cut = i > 0 and i % limits.max_tensors == 0
        else:
            cut = (
                limits.max_bytes is not None
                and i > starts[-1]
                and current + size > limits.max_bytes
            )
        if cut:
            starts.append(i)
            current = 0
        current += size
    ends = [*starts[1:], len(sizes)]
    return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def set_size(path: Path) -> int:
    """The bytes of the model ``path`` stands for (every shard of a split set)."""
    return sum(f.stat().st_size for f in split_set(path))


def shards_named_like(path: Path, which: str = "*") -> list[Path]:
    """The shard files beside ``path`` whose names split ``path``'s name (any count), sorted;
    ``which="00001"`` finds first shards only."""
    stem = glob.escape(path.name.removesuffix(".gguf"))
    return sorted(path.parent.glob(f"{stem}-{which}-of-*.gguf"))


def built_form(path: Path) -> Path:
    """``path`` when it exists, else the first shard of a split set made in its place, else
    ``path`` (not built)."""
    if path.exists():
        return path
    firsts = shards_named_like(path, "00001")
    return firsts[0] if len(firsts) == 1 else path
