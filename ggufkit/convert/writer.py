"""Streaming GGUF writing: the header first, then each tensor's data in row blocks.

Every tensor's offset is known from the plans before any data is read, so worker threads convert
row blocks and ``pwrite`` them straight to their place in the file, in any order: no tensor is
held whole, no output is buffered, and the kernels of ``ggufkit.formats.kernels`` (numpy passes
that release the GIL, bit for bit what the upstream converter writes) run in parallel, each
thread converting into a buffer of its own. f16 -> f16 is a raw copy from the memory map.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from ggufkit.convert.base import TensorPlan
from ggufkit.core.errors import DiskSpaceError, GGUFKitError
from ggufkit.core.log import get_logger
from ggufkit.formats import blocks, kernels
from ggufkit.formats.blocks import BlockPipeline, PositionedWriter, row_blocks
from ggufkit.formats.safetensors import Checkpoint, TensorSource, bf16_to_float32

log = get_logger(__name__)


def output_flags() -> int:
    """Flags for the output file. O_BINARY where the C runtime has a text mode (Windows), which
    would otherwise turn every 0x0A byte written through os.write into 0x0D 0x0A."""
    return os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


BLOCK_BYTES = blocks.BLOCK_BYTES  # source bytes per row block (a test shrinks it)


# --- header ---------------------------------------------------------------------------------

_SCALARS = {
    VT.UINT8: "<B",
    VT.INT8: "<b",
    VT.UINT16: "<H",
    VT.INT16: "<h",
    VT.UINT32: "<I",
    VT.INT32: "<i",
    VT.FLOAT32: "<f",
    VT.UINT64: "<Q",
    VT.INT64: "<q",
    VT.FLOAT64: "<d",
    VT.BOOL: "<?",
}
_ARRAY_DTYPES = {VT.UINT8: "<u1", VT.INT32: "<i4", VT.UINT32: "<u4", VT.FLOAT32: "<f4"}


def _string(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack("<Q", len(raw)) + raw


def _item_type(item: Any) -> VT:
    if isinstance(item, np.floating):
        return VT.FLOAT32
    if isinstance(item, np.integer):
        return VT.INT32
    return VT.get_type(item)


def _value(value: Any, vtype: VT, sub_type: VT | None) -> bytes:
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype], value)
    if vtype == VT.STRING:
        return _string(value)
    if vtype != VT.ARRAY:
        raise ValueError(f"unsupported GGUF value type {vtype}")
    items = list(value)
    if not items:
        raise ValueError("GGUF arrays cannot be empty")
    ltype = sub_type or _item_type(items[0])
    head = struct.pack("<IQ", ltype, len(items))
    if ltype in _ARRAY_DTYPES:  # numeric arrays (token scores, types) in one go
        return head + np.asarray(items, dtype=_ARRAY_DTYPES[ltype]).tobytes()
    return head + b"".join(_value(item, ltype, None) for item in items)


def serialize_header(
    kv: Mapping[str, Any],
    plans: Sequence[TensorPlan],
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT,
) -> tuple[bytes, list[int]]:
    """The GGUF header (magic to aligned data start) and each tensor's offset in the file.

    ``kv`` maps keys to ``gguf.GGUFValue`` (what ``GGUFWriter.kv_data[0]`` holds).
    """
    parts = [struct.pack("<IIQQ", gguf.GGUF_MAGIC, gguf.GGUF_VERSION, len(plans), len(kv))]
    for key, val in kv.items():
        parts.append(
            _string(key) + struct.pack("<I", val.type) + _value(val.value, val.type, val.sub_type)
        )
    relative = []
    cursor = 0
    for plan in plans:
        dims = tuple(reversed(plan.shape)) or (1,)
        parts.append(
            _string(plan.name)
            + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            + struct.pack("<IQ", plan.ggml_type, cursor)
        )
        relative.append(cursor)
        cursor += -(-plan.n_bytes // alignment) * alignment
    header = b"".join(parts)
    header += b"\0" * (-len(header) % alignment)
    return header, [len(header) + r for r in relative]


# --- block conversion -----------------------------------------------------------------------


def _output_buffer(n_bytes: int) -> np.ndarray:
    return kernels.scratch("convert", n_bytes)


def convert_block(block: np.ndarray, src_dtype: str, target: QT) -> tuple[np.ndarray, bool]:
    """A block of source rows (BF16 as uint16 bits) as ``target`` bytes, row for row, and whether
    the block held NaN or Inf. The result may be this thread's reused buffer: write it out
    before converting the next block."""
    if src_dtype == "BF16":
        if target == QT.BF16:
            return block, kernels.bf16_nonfinite(block)
        if target == QT.F16:
            out = _output_buffer(block.nbytes).view(np.uint16).reshape(block.shape)
            return out, kernels.bf16_to_f16(np.ascontiguousarray(block), out)
        block = bf16_to_float32(block)
    elif src_dtype == "F16" and target == QT.F16:
        return block, kernels.f16_nonfinite(block)
    nonfinite = _nonfinite(block)
    if target == QT.F32:
        return block.astype(np.float32, copy=False), nonfinite
    if target == QT.F16:
        return block.astype(np.float16), nonfinite
    values = block.astype(np.float32, copy=False)
    if target == QT.Q8_0 and values.ndim and values.shape[-1] % kernels.Q8_0_BLOCK == 0:
        out = _output_buffer(values.size // kernels.Q8_0_BLOCK * kernels.Q8_0_BYTES)
        kernels.quantize_q8_0(np.ascontiguousarray(values), out)
        return out, nonfinite
    return gguf.quants.quantize(values, target), nonfinite


def _nonfinite(block: np.ndarray) -> bool:
    if block.dtype == np.float32:
        return kernels.f32_nonfinite(block)
    return block.dtype.kind == "f" and not bool(np.isfinite(block).all())


# --- writing --------------------------------------------------------------------------------


@dataclass
class WriteStats:
    n_tensors: int
    n_bytes: int  # the output file's size
    source_bytes: int
    seconds: float


def _write_error(path: Path, exc: OSError) -> GGUFKitError:
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"the disk holding {path} filled up while writing", path=path)
    return GGUFKitError(f"cannot write {path}: {exc.strerror}", path=path)


def _row_reader(source: TensorSource, plan: TensorPlan) -> Callable[[Any], np.ndarray] | None:
    """A computed source's row-block reader (``CombinedSource.read_rows``: base + delta), else
    None: a memory map is sliced as is, and other sources give whole tensors."""
    read_rows = getattr(source, "read_rows", None)
    if plan.source_name is None or read_rows is None:
        return None
    name, block_bytes = plan.source_name, 2 * BLOCK_BYTES

    def take(rows: Any) -> np.ndarray:  # into this thread's buffer, written before the next
        result: np.ndarray = read_rows(name, rows, buffer=kernels.scratch("rows", block_bytes))
        return result

    return take


def _tensor_tasks(
    plan: TensorPlan,
    source: TensorSource,
    offset: int,
    sink: PositionedWriter,
    nonfinite: dict[str, str],
) -> list[Callable[[], int]]:
    """Callables that each convert and write one row block; they return source bytes done."""
    take = _row_reader(source, plan)
    if take is not None:  # computed per row block by the workers: nothing held whole
        info = source.info(plan.source_name or "")
        src_dtype, order = info.dtype, plan.row_order
        shape, n_bytes = tuple(info.shape) or (1,), info.n_bytes
    else:
        if plan.source_name is not None:
            src_dtype = source.info(plan.source_name).dtype
            array = source.read(plan.source_name)
            order = plan.row_order
        else:
            array = np.asarray(plan.produce())
            src_dtype = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}.get(
                array.dtype, ""
            )
            if not src_dtype:
                array, src_dtype = array.astype(np.float32), "F32"
            order = None
        if array.ndim == 0:
            array = array.reshape(1)
        shape, n_bytes, take = tuple(array.shape), array.nbytes, array.__getitem__
    if shape != tuple(plan.shape):
        raise GGUFKitError(f"internal error: {plan.name} is {shape}, planned {plan.shape}")
    rows = shape[0]
    row_src = n_bytes // max(1, rows)
    row_out = plan.n_bytes // max(1, rows)

    def run_block(start: int, stop: int) -> int:
        block = take(order[start:stop] if order is not None else slice(start, stop))
        data, has_nonfinite = convert_block(block, src_dtype, plan.ggml_type)
        if has_nonfinite:
            nonfinite.setdefault(plan.name, plan.source_name or plan.name)
        sink.write_at(np.ascontiguousarray(data), offset + start * row_out)
        return (stop - start) * row_src

    return [
        functools.partial(run_block, start, stop)
        for start, stop in row_blocks(rows, row_src, BLOCK_BYTES)
    ]


def write_tensor_data(
    path: Path,
    fd: int,
    plans: Sequence[TensorPlan],
    offsets: Sequence[int],
    source: TensorSource,
    *,
    threads: int,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Convert and write every plan's data at its offset, ``threads`` blocks at a time."""
    sink = PositionedWriter(fd)
    nonfinite: dict[str, str] = {}  # GGUF name -> source name, filled by the worker threads

    def done(plan: TensorPlan, source_bytes: list[int]) -> None:
        if on_bytes is not None:
            for block_bytes in source_bytes:
                on_bytes(block_bytes)
        if plan.source_name is not None:
            source.release(plan.source_name)
        if plan.name in nonfinite:
            # Converted as is (upstream does the same), but a user must hear of it.
            log.warning(
                "tensor %s holds NaN or Inf values; %s will too",
                nonfinite[plan.name],
                plan.name,
            )

    # A memory-mapped or row-computed source costs nothing to keep open, so the next tensor's
    # blocks are queued before the previous one finishes; arrays produced in memory are taken
    # one at a time to bound memory by the largest tensor.
    window = 2 if isinstance(source, Checkpoint) or hasattr(source, "read_rows") else 1
    # The next tensor is read from disk while this one converts (a fault reads ahead little).
    upcoming = [p.source_name for p in plans[1:]] + [None]
    if plans and plans[0].source_name and isinstance(source, Checkpoint):
        source.prefetch(plans[0].source_name)
    try:
        with BlockPipeline[TensorPlan, int](threads, window, done, "ggufkit-write") as pipeline:
            for plan, offset, following in zip(plans, offsets, upcoming, strict=True):
                if following is not None and isinstance(source, Checkpoint):
                    source.prefetch(following)
                pipeline.add(plan, _tensor_tasks(plan, source, offset, sink, nonfinite))
            pipeline.finish()
    except OSError as exc:
        raise _write_error(path, exc) from exc


def write_gguf(
    path: Path,
    kv: Mapping[str, Any],
    plans: Sequence[TensorPlan],
    source: TensorSource,
    *,
    threads: int,
    on_bytes: Callable[[int], None] | None = None,
    final_kv: Callable[[], Mapping[str, Any]] | None = None,
) -> WriteStats:
    """Write a complete GGUF file at ``path`` (the caller makes it atomic).

    ``final_kv``, when given, is called after the data is written and its header (which must
    serialize to the same length, e.g. hashes computed meanwhile) replaces the first one.
    """
    started = time.perf_counter()
    header, offsets = serialize_header(kv, plans)
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    total = offsets[-1] + -(-plans[-1].n_bytes // align) * align if plans else len(header)
    try:
        fd = os.open(path, output_flags(), 0o644)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        try:
            os.ftruncate(fd, total)  # padding between tensors stays zero
            PositionedWriter(fd).write_at(header, 0)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        write_tensor_data(path, fd, plans, offsets, source, threads=threads, on_bytes=on_bytes)
        if final_kv is not None:
            final_header, _ = serialize_header(final_kv(), plans)
            if len(final_header) != len(header):
                raise GGUFKitError("internal error: the final GGUF header changed length")
            PositionedWriter(fd).write_at(final_header, 0)
    finally:
        os.close(fd)
    return WriteStats(
        n_tensors=len(plans),
        n_bytes=total,
        source_bytes=sum(p.source_bytes for p in plans),
        seconds=time.perf_counter() - started,
    )
