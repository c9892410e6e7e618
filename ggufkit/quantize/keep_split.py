"""``--keep-split`` and ``--dry-run``: llama-quantize's own ways with a split input and with sizes.

With ``--keep-split`` llama-quantize writes one output shard per input shard, named
``<output less .gguf>-0000i-of-0000N.gguf``; it runs in a temporary folder beside the target and
the finished shards are moved into place, so a failed run leaves nothing. ``--dry-run`` asks
llama-quantize for each type's size without writing anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core.errors import QuantizeError, UsageError
from ggufkit.formats.gguf_split import shards_named_like, split_set
from ggufkit.quantize.engines import DryRun, Engine, QuantizeOptions, RunReport
from ggufkit.quantize.types import QuantType


@dataclass(frozen=True)
class KeptSplit:
    first: Path  # the first output shard, standing for the set
    size: int
    report: RunReport


def check_keep_split(source: Path, options: QuantizeOptions, split_active: bool) -> None:
    if not options.keep_split:
        return
    if split_active:
        raise UsageError(
            "--keep-split keeps the input's shards; --split-max-size/--split-max-tensors cut "
            "new ones",
            hint="use one or the other",
        )
    if len(split_set(source)) < 2:
        raise UsageError(
            f"--keep-split needs a split input; {source.name} is a single file",
            hint="leave --keep-split out, or cut the output with --split-max-size",
        )


def quantize_kept_split(
    engine: Engine, source: Path, quant_type: QuantType, target: Path, options: QuantizeOptions
) -> KeptSplit:
    """Quantize a split set shard for shard into ``target``'s shard names."""
    from ggufkit.core.partials import owned_temp_dir

    prefix = target.name.removesuffix(".gguf")
    with owned_temp_dir("ggufkit-keep-split-", target.parent) as work:
        report = engine.run(source, Path(work) / target.name, quant_type, options)
        shards = sorted(Path(work).glob(f"{prefix}-*-of-*.gguf"))
        if not shards:
            raise QuantizeError(f"llama-quantize --keep-split wrote no shards for {target.name}")
        for stale in shards_named_like(target):
            stale.unlink()  # an earlier run's shards of the same name
        size = 0
        for shard in shards:
            size += shard.stat().st_size
            os.replace(shard, target.parent / shard.name)
    return KeptSplit(target.parent / shards[0].name, size, report)


@dataclass(frozen=True)
class PlannedSize:
    """What ``--dry-run`` reports for one type: nothing is written."""

    type: str
    output: Path
    size_bytes: int | None  # header + tensor data, as llama-quantize computes the data
    bits_per_weight: float | None
    requires_imatrix: bool

    def to_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "output": str(self.output),
            "size": self.size_bytes,
            "bits_per_weight": self.bits_per_weight,
            "requires_imatrix": self.requires_imatrix,
            "dry_run": True,
        }


def planned_size(quant_type: QuantType, target: Path, plan: DryRun, header: int) -> PlannedSize:
    size = None if plan.size_bytes is None else plan.size_bytes + header
    return PlannedSize(quant_type.name, target, size, plan.bits_per_weight, plan.requires_imatrix)
