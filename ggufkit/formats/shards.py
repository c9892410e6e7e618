"""A streaming writer for sharded safetensors checkpoints (``model-0000N-of-0000M.safetensors``).

Every tensor's dtype and shape are known before the first byte is written, so each shard's header
is computed up front, written, and followed by the tensors' bytes as they are produced: one tensor
in memory at a time, never a state dict. Shards hold at most ``max_shard_bytes`` of data (the
Hugging Face default of 5 GB); a tensor larger than that gets a shard of its own.

Given ``produce_rows`` and several threads, tensors go in row blocks instead: worker threads
compute blocks and write each at its offset (known from the header), so computing, reading and
writing overlap on every core and no tensor is held whole.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggufkit.core.errors import GGUFKitError
from ggufkit.formats import blocks
from ggufkit.formats.blocks import BlockPipeline, PositionedWriter, row_blocks
from ggufkit.formats.safetensors import SAFETENSORS_DTYPES, SAFETENSORS_INDEX

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # what transformers' save_pretrained uses ("5GB")
BLOCK_BYTES = blocks.BLOCK_BYTES  # output bytes per row block (a test shrinks it)
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class TensorSpec:
    """What will be written under ``name``: a safetensors dtype code and a shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def n_bytes(self) -> int:
        return SAFETENSORS_DTYPES[self.dtype][1] * int(np.prod(self.shape, dtype=object))


@dataclass(frozen=True)
class ShardedCheckpoint:
    """The files written: the shards in order, the index (None for a single file), data bytes."""

    files: list[Path]
    index: Path | None
    total_bytes: int


def plan_shards(
    specs: Iterable[TensorSpec], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> list[list[TensorSpec]]:
    """Split the tensors, in order, into shards of at most ``max_shard_bytes`` of data each."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.n_bytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.n_bytes
    return shards if shards[0] else []


def shard_header(specs: list[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and JSON header of a shard, padded with spaces to 8 bytes like safetensors."""
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.n_bytes],
        }
        offset += spec.n_bytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def shard_names(n_shards: int) -> list[str]:
    if n_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]


def _check_array(spec: TensorSpec, array: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    """Refuse bytes that do not match the header already on disk (a bug in the producer);
    ``shape``: that of a block of rows, when not the whole tensor."""
    shape = spec.shape if shape is None else shape
    np_dtype = np.dtype(SAFETENSORS_DTYPES[spec.dtype][0])
    if array.dtype.itemsize != np_dtype.itemsize or array.dtype.kind != np_dtype.kind:
        raise GGUFKitError(
            f"internal error: tensor {spec.name!r} was planned as {spec.dtype} "
            f"but produced as {array.dtype}"
        )
    if tuple(array.shape) != shape:
        raise GGUFKitError(
            f"internal error: tensor {spec.name!r} was planned with shape {shape} "
            f"but produced with shape {tuple(array.shape)}"
        )


RowProducer = Callable[[TensorSpec, int, int], np.ndarray]


def _write_blocks(
    fd: int,
    data_start: int,
    shard: list[TensorSpec],
    produce_rows: RowProducer,
    threads: int,
    after_tensor: Callable[[TensorSpec], None] | None,
) -> None:
    """Every tensor of a shard in row blocks, each written at its place by a worker thread."""
    sink = PositionedWriter(fd)

    def block(spec: TensorSpec, start: int, stop: int, offset: int) -> None:
        array = produce_rows(spec, start, stop)
        _check_array(spec, array, (stop - start, *spec.shape[1:]) if spec.shape else (1,))
        sink.write_array(array, offset)

    def done(spec: TensorSpec, _: list[None]) -> None:
        if after_tensor is not None:
            after_tensor(spec)

    offset = data_start
    # Up to three tensors in flight: the next ones' blocks are queued, no worker waits.
    with BlockPipeline[TensorSpec, None](threads, 3, done, "ggufkit-shards") as pipeline:
        for spec in shard:
            rows = spec.shape[0] if spec.shape else 1
            row_bytes = spec.n_bytes // max(1, rows)
            tasks = [
                functools.partial(block, spec, start, stop, offset + start * row_bytes)
                for start, stop in row_blocks(rows, row_bytes, BLOCK_BYTES)
            ]
            pipeline.add(spec, tasks)
            offset += spec.n_bytes
        pipeline.finish()


def write_sharded(
    out_dir: Path,
    specs: list[TensorSpec],
    produce: Callable[[TensorSpec], np.ndarray],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    after_tensor: Callable[[TensorSpec], None] | None = None,
    metadata: dict[str, str] | None = None,
    produce_rows: RowProducer | None = None,
    threads: int = 1,
) -> ShardedCheckpoint:
    """Write ``specs`` as safetensors shards in ``out_dir``, asking ``produce`` for each tensor.

    ``produce`` returns the tensor's array (BF16 as uint16 bits); ``after_tensor`` runs once its
    bytes are written, so the caller can release the inputs before the next tensor is made. With
    more than one shard an index (``model.safetensors.index.json``) maps names to files.
    ``produce_rows(spec, start, stop)``, when given, returns rows ``start:stop`` of a tensor
    (its leading dimension); ``threads`` workers then compute and write row blocks in parallel.
    """
    out_dir = Path(out_dir)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise GGUFKitError("internal error: duplicate tensor names in a checkpoint plan")
    shards = plan_shards(specs, max_shard_bytes)
    files = [out_dir / name for name in shard_names(len(shards))]
    weight_map: dict[str, str] = {}
    total = 0
    for file, shard in zip(files, shards, strict=True):
        with open(file, "wb") as handle:
            handle.write(shard_header(shard, metadata))
            if produce_rows is not None:
                handle.flush()
                _write_blocks(
                    handle.fileno(), handle.tell(), shard, produce_rows, threads, after_tensor
                )
                weight_map.update((spec.name, file.name) for spec in shard)
                total += sum(spec.n_bytes for spec in shard)
                continue
            for spec in shard:
                array = produce(spec)
                _check_array(spec, array)
                # Little-endian on disk; this copies only a non-contiguous or big-endian array.
                data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                handle.write(data.reshape(-1).view(np.uint8).data)
                del array, data
                weight_map[spec.name] = file.name
                total += spec.n_bytes
                if after_tensor is not None:
                    after_tensor(spec)
    index = None
    if len(files) > 1:
        index = out_dir / SAFETENSORS_INDEX
        index.write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            + "\n",
            encoding="utf-8",
        )
    return ShardedCheckpoint(files=files, index=index, total_bytes=total)
