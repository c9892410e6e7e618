"""Reading a GGUF file: :func:`read_gguf` and :func:`check_gguf`, bounds-checked (see
:mod:`ggufkit.formats.ggufinfo` for what the checks are and what the result holds)."""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path
from typing import Any

from ggufkit.core.errors import GGUFFormatError
from ggufkit.formats.gguf_split import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS, split_set
from ggufkit.formats.ggufinfo import (
    ARRAY,
    DEFAULT_ALIGNMENT,
    INT64_MAX,
    MAGIC,
    MAX_ARRAY_NESTING,
    MAX_DIMS,
    MAX_TYPE_ID,
    STRING,
    SUPPORTED_VERSIONS,
    VALUE_TYPES,
    ArraySummary,
    GGUFInfo,
    GGUFTensor,
    ggml_types,
)

__all__ = ["check_gguf", "read_gguf"]


class _Reader:
    """Bounds-checked little/big-endian reads over a buffer; every failure is a GGUFFormatError."""

    def __init__(self, buf: Any, size: int, path: Path) -> None:
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0
        self.endian = "<"

    def fail(self, message: str) -> GGUFFormatError:
        return GGUFFormatError(
            f"{self.path} is not a valid GGUF file: {message}",
            hint="re-create it (ggufkit convert / ggufkit quantize) or download it again",
            path=self.path,
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated while reading {what} at byte {self.pos} "
                f"(needs {n} more bytes, the file has {self.size})"
            )

    def scalar(self, code: str, what: str) -> Any:
        n = struct.calcsize(code)
        self.need(n, what)
        (value,) = struct.unpack_from(self.endian + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        length = self.scalar("Q", f"the length of {what}")
        self.need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def strings(self, count: int, keep: int, key: str) -> list[str]:
        """``count`` strings of an array, the first ``keep`` decoded. Vocabularies hold hundreds
        of thousands, so the rest are skipped in the tightest loop Python allows."""
        buf, size = self.buf, self.size
        unpack = struct.Struct(self.endian + "Q").unpack_from
        items: list[str] = []
        for index in range(min(keep, count)):
            self.need(8, f"item {index} of '{key}'")
            (length,) = unpack(buf, self.pos)
            self.pos += 8
            self.need(length, f"item {index} of '{key}'")
            items.append(bytes(buf[self.pos : self.pos + length]).decode("utf-8", errors="replace"))
            self.pos += length
        pos = self.pos
        try:
            for _ in range(count - len(items)):
                pos += 8 + unpack(buf, pos)[0]
        except struct.error:  # a length field past the end of the file
            pos = size + 1
        if pos > size:
            self.pos = min(pos, size)
            raise self.fail(
                f"truncated inside the string array '{key}' (the file has {size} bytes)"
            )
        self.pos = pos
        return items

    def value(self, type_id: int, key: str, limit: int | None, depth: int = 0) -> Any:
        if type_id not in VALUE_TYPES:
            raise self.fail(f"key '{key}' has an unknown value type {type_id}")
        if type_id == STRING:
            return self.string(f"the value of '{key}'")
        if type_id != ARRAY:
            return self.scalar(VALUE_TYPES[type_id][1] or "", f"the value of '{key}'")
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"key '{key}' nests arrays more than {MAX_ARRAY_NESTING} deep")
        item_type = self.scalar("I", f"the array type of '{key}'")
        length = self.scalar("Q", f"the array length of '{key}'")
        if item_type not in VALUE_TYPES:
            raise self.fail(f"array '{key}' has an unknown item type {item_type}")
        code = VALUE_TYPES[item_type][1]
        # Each item takes at least one byte (strings 8): a length beyond that cannot be real.
        min_item = (
            8 if item_type == STRING else 12 if item_type == ARRAY else struct.calcsize(code or "B")
        )
        if length > (self.size - self.pos) // min_item:
            raise self.fail(
                f"array '{key}' claims {length} items but only {self.size - self.pos} bytes "
                "remain (truncated or corrupt)"
            )
        keep = length if limit is None else min(limit, length)
        items: list[Any]
        if code is not None:
            n = struct.calcsize(code)
            self.need(n * length, f"the items of '{key}'")
            items = list(struct.unpack_from(f"{self.endian}{keep}{code}", self.buf, self.pos))
            self.pos += n * length
        elif item_type == STRING:
            items = self.strings(length, keep, key)
        else:
            items = [self.value(item_type, key, limit, depth + 1) for _ in range(keep)]
            for _ in range(length - keep):
                self.value(item_type, key, 0, depth + 1)
        if keep < length:
            return ArraySummary(VALUE_TYPES[item_type][0], length, tuple(items))
        return items


def read_gguf(path: str | Path, *, max_array_items: int | None = None) -> GGUFInfo:
    """Read and validate a GGUF file's header, metadata and tensor table (not the tensor data).

    ``max_array_items`` keeps only that many items of each metadata array (an
    :class:`ArraySummary` stands for the rest); None decodes everything. The first shard of a
    split set stands for the model: the tensors of every shard are listed, ``file_size`` is the
    set's, and ``shards`` names its files.
    Raises :class:`GGUFFormatError`, naming the file, for anything that is not a valid GGUF.
    """
    path = Path(path)
    files = split_set(path) if path.is_file() else [path]
    info = _read_one(path, max_array_items)
    if len(files) > 1:
        rest = [_read_one(f, 0) for f in files[1:]]
        info = join_shards(info, rest)
    return info


def join_shards(first: GGUFInfo, rest: list[GGUFInfo]) -> GGUFInfo:
    """One model from the shards of a split set, checked against their ``split.*`` keys."""
    count = len(rest) + 1
    for no, shard in enumerate([first, *rest]):
        meta = shard.metadata
        if meta.get(SPLIT_NO) != no or meta.get(SPLIT_COUNT) != count:
            raise GGUFFormatError(
                f"{shard.path} is not shard {no + 1} of {count} (its split keys say "
                f"{meta.get(SPLIT_NO)!r} of {meta.get(SPLIT_COUNT)!r})",
                hint="the set mixes files of different splits: split the model again",
                path=shard.path,
            )
    tensors = [t for shard in (first, *rest) for t in shard.tensors]
    expected = first.metadata.get(SPLIT_TENSORS)
    if expected != len(tensors):
        raise GGUFFormatError(
            f"the split set of {first.path.name} holds {len(tensors)} tensors, "
            f"its first shard says {expected}",
            hint="split the model again",
            path=first.path,
        )
    return dataclasses.replace(
        first,
        tensors=tensors,
        file_size=first.file_size + sum(s.file_size for s in rest),
        shards=[first.path, *(s.path for s in rest)],
    )


def _read_one(path: Path, max_array_items: int | None) -> GGUFInfo:
    try:
        with open(path, "rb") as handle:
            size = path.stat().st_size
            if size < 4 + 4 + 8 + 8:
                head = handle.read(9)
                if head[:4] == MAGIC:
                    raise GGUFFormatError(
                        f"{path} is truncated: {size} bytes, shorter than a GGUF header",
                        hint="re-create or download the file again",
                        path=path,
                    )
                raise _not_gguf(path, head)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Reader(buf, size, path), max_array_items)
    except GGUFFormatError:
        raise
    except IsADirectoryError as exc:
        raise GGUFFormatError(f"{path} is a directory, not a GGUF file", path=path) from exc
    except FileNotFoundError as exc:
        raise GGUFFormatError(
            f"{path} does not exist", hint="check the path (ls *.gguf)", path=path
        ) from exc
    except (OSError, ValueError, OverflowError, MemoryError, struct.error) as exc:
        # mmap/read errors, or anything the explicit checks above did not foresee.
        raise GGUFFormatError(f"cannot read {path} as GGUF: {exc}", path=path) from exc


def check_gguf(path: str | Path) -> GGUFInfo:
    """Cheap validation: like :func:`read_gguf`, but arrays are walked, not decoded."""
    return read_gguf(path, max_array_items=4)


def _not_gguf(path: Path, head: bytes) -> GGUFFormatError:
    hint = "give a .gguf file (a Hugging Face checkpoint is converted with `ggufkit convert`)"
    if head[:2] == b"PK":
        hint = "this looks like a PyTorch checkpoint: convert it first with `ggufkit convert`"
    elif head[8:9] == b"{":  # safetensors: a little-endian u64 header length, then JSON
        hint = "this looks like a safetensors file: convert the checkpoint with `ggufkit convert`"
    return GGUFFormatError(
        f"{path} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF')",
        hint=hint,
        path=path,
    )


def _parse(r: _Reader, max_array_items: int | None) -> GGUFInfo:
    if bytes(r.buf[0:4]) != MAGIC:
        raise _not_gguf(r.path, bytes(r.buf[0:9]))
    r.pos = 4
    version = r.scalar("I", "the version")
    if version & 0xFFFF == 0 and version != 0:
        r.endian = ">"  # a big-endian file read on a little-endian reader, or vice versa
        version = struct.unpack("<I", struct.pack(">I", version))[0]
    byte_order = "little" if r.endian == "<" else "big"
    if version == 1:
        raise r.fail("GGUF version 1 is no longer supported by llama.cpp; re-create the file")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {version} (supported: 2 and 3)")
    n_tensors = r.scalar("Q", "the tensor count")
    n_kv = r.scalar("Q", "the metadata count")
    remaining = r.size - r.pos
    if n_kv > remaining // 13:  # key length 8 + key >= 1 + type 4
        raise r.fail(
            f"header claims {n_kv} metadata entries but only {remaining} bytes follow "
            "(truncated or corrupt)"
        )
    if n_tensors > remaining // 24:  # name length 8 + dims count 4 + type 4 + offset 8
        raise r.fail(
            f"header claims {n_tensors} tensors but only {remaining} bytes follow "
            "(truncated or corrupt)"
        )

    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    for index in range(n_kv):
        key = r.string(f"metadata key {index}")
        if not key:
            raise r.fail(f"metadata key {index} is empty")
        if key in metadata:
            raise r.fail(f"duplicate metadata key '{key}'")
        type_id = r.scalar("I", f"the type of '{key}'")
        start = r.pos
        metadata[key] = r.value(type_id, key, max_array_items)
        types[key] = VALUE_TYPES.get(type_id, ("?", None))[0]
        if type_id == ARRAY:
            item = struct.unpack_from(r.endian + "I", r.buf, start)[0]
            types[key] = f"array[{VALUE_TYPES[item][0]}]"

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and types["general.alignment"] != "uint32":
        raise r.fail(f"general.alignment has type {types['general.alignment']}, expected uint32")
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment} is not a power of 2")

    known = ggml_types()
    tensors: list[GGUFTensor] = []
    seen: set[str] = set()
    raw: list[tuple[str, int, tuple[int, ...], int, int]] = []
    for index in range(n_tensors):
        name = r.string(f"the name of tensor {index}")
        if name in seen:
            raise r.fail(f"duplicate tensor name '{name}'")
        seen.add(name)
        n_dims = r.scalar("I", f"the dimension count of '{name}'")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(r.scalar("Q", f"the shape of '{name}'") for _ in range(n_dims))
        n_elements = 1
        for dim in shape:
            if dim > INT64_MAX or (dim and n_elements > INT64_MAX // dim):
                raise r.fail(f"tensor '{name}' has an impossible shape {list(shape)}")
            n_elements *= dim
        type_id = r.scalar("I", f"the type of '{name}'")
        offset = r.scalar("Q", f"the data offset of '{name}'")
        raw.append((name, type_id, shape, offset, n_elements))

    data_offset = r.pos + (-r.pos % alignment) if n_tensors else r.pos
    expected: int | None = 0  # where the next tensor must start; None after an unknown type
    for name, type_id, shape, offset, n_elements in raw:
        ggml_type = known.get(type_id)
        n_bytes: int | None = None
        if ggml_type is not None:
            row = shape[0] if shape else 1
            if row % ggml_type.block_size:
                raise r.fail(
                    f"tensor '{name}' ({ggml_type.name}) has rows of {row} elements, "
                    f"not a multiple of its block size {ggml_type.block_size}"
                )
            n_bytes = n_elements // ggml_type.block_size * ggml_type.type_size
        elif type_id >= MAX_TYPE_ID:
            raise r.fail(f"tensor '{name}' has an invalid ggml type {type_id}")
        if expected is not None and offset != expected:
            raise r.fail(f"tensor '{name}' has data offset {offset}, expected {expected}")
        end = data_offset + offset + (n_bytes or 0)
        if end > r.size:
            raise r.fail(
                f"truncated: tensor '{name}' needs bytes up to {end}, the file has {r.size}"
            )
        # After a type the installed gguf library does not know (newer than it), the next
        # tensor's own offset is the only thing to go by.
        expected = None if n_bytes is None else offset + n_bytes + (-(offset + n_bytes) % alignment)
        tensors.append(
            GGUFTensor(
                name=name,
                type_id=type_id,
                type_name=ggml_type.name if ggml_type else f"TYPE_{type_id}",
                shape=shape,
                offset=offset,
                file_offset=data_offset + offset,
                n_elements=n_elements,
                n_bytes=n_bytes,
            )
        )
    return GGUFInfo(
        path=r.path,
        version=version,
        byte_order=byte_order,
        alignment=alignment,
        data_offset=data_offset,
        file_size=r.size,
        metadata=metadata,
        tensors=tensors,
        metadata_types=types,
    )
