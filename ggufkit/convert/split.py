"""Writing a converted model as a split set (``--split-max-size`` / ``--split-max-tensors``).

Each shard is a complete GGUF written by :func:`ggufkit.convert.writer.write_gguf`; the shards
follow ``llama-gguf-split``: the model's metadata in the first shard only, then ``split.no``,
``split.count`` and ``split.tensors.count`` in every shard, tensors cut where the tool cuts them.
The first shard is written last, so its header can carry hashes computed while the data streamed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType as VT

from ggufkit.convert.base import TensorPlan
from ggufkit.convert.writer import WriteStats, write_gguf
from ggufkit.core.fsutil import atomic_output
from ggufkit.formats.gguf_split import (
    SPLIT_COUNT,
    SPLIT_NO,
    SPLIT_TENSORS,
    SplitLimits,
    plan_shards,
    shard_paths,
)
from ggufkit.formats.safetensors import TensorSource


def split_keys(no: int, count: int, n_tensors: int) -> dict[str, gguf.GGUFValue]:
    # llama-gguf-split's order: it sets split.count last (setting a key again moves it to the end)
    return {
        SPLIT_NO: gguf.GGUFValue(no, VT.UINT16),
        SPLIT_TENSORS: gguf.GGUFValue(n_tensors, VT.INT32),
        SPLIT_COUNT: gguf.GGUFValue(count, VT.UINT16),
    }


def write_split(
    out: Path,
    kv: Mapping[str, Any],
    plans: Sequence[TensorPlan],
    source: TensorSource,
    limits: SplitLimits,
    *,
    threads: int,
    on_bytes: Callable[[int], None] | None = None,
    final_kv: Callable[[], Mapping[str, Any]] | None = None,
) -> tuple[WriteStats, list[Path]]:
    """Write the shards of ``out`` (``NAME-00001-of-0000N.gguf`` …) atomically as a set: every
    shard is renamed into place only when all are written. Returns the totals and the files."""
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    ranges = plan_shards([-(-p.n_bytes // align) * align for p in plans], limits)
    files = shard_paths(out, len(ranges))
    n = len(plans)
    stats: list[WriteStats] = []
    with contextlib.ExitStack() as stack:
        partials = [stack.enter_context(atomic_output(f)) for f in files]
        for no in reversed(range(len(ranges))):
            extra = split_keys(no, len(ranges), n)
            shard_kv = {**kv, **extra} if no == 0 else extra
            last = None
            if no == 0 and final_kv is not None:
                last = functools.partial(_with_split_keys, final_kv, extra)
            stats.append(
                write_gguf(
                    partials[no],
                    shard_kv,
                    [plans[i] for i in ranges[no]],
                    source,
                    threads=threads,
                    on_bytes=on_bytes,
                    final_kv=last,
                )
            )
    total = WriteStats(
        n_tensors=n,
        n_bytes=sum(s.n_bytes for s in stats),
        source_bytes=sum(s.source_bytes for s in stats),
        seconds=sum(s.seconds for s in stats),
    )
    return total, files


def _with_split_keys(
    final_kv: Callable[[], Mapping[str, Any]], extra: Mapping[str, Any]
) -> Mapping[str, Any]:
    return {**final_kv(), **extra}
