"""What a GGUF file holds (:class:`GGUFInfo`: header, metadata, tensor table) and the format's
constants; :mod:`ggufkit.formats.gguf_reader` fills it in.

``read_gguf`` parses a GGUF file with :mod:`struct` over a read-only memory map and checks every
count, length and offset against the file size before trusting it, so a malformed, truncated or
hostile file raises :class:`GGUFFormatError` naming the file — never IndexError, ValueError or
MemoryError, and never a large allocation. The checks follow the pinned llama.cpp's ``gguf.cpp``
(duplicate keys or tensor names, alignment a power of two, at most 4 dimensions, rows a multiple of
the block size, tensors contiguous in order), so a file that passes is one llama.cpp can open.
``check_gguf`` is the cheap variant for validation: it walks long arrays without decoding them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.formats.gguf_tables import GGMLType, file_type_name, ggml_type_by_name, ggml_types

__all__ = [
    "ArraySummary",
    "GGMLType",
    "GGUFInfo",
    "GGUFTensor",
    "file_type_name",
    "ggml_type_by_name",
    "ggml_types",
]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8
MAX_TYPE_ID = 256  # ggml has ~42 types; an id past this is corruption, not a newer library
INT64_MAX = 2**63 - 1

# GGUF metadata value types: id -> (name, struct code or None for string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "B"),
    1: ("int8", "b"),
    2: ("uint16", "H"),
    3: ("int16", "h"),
    4: ("uint32", "I"),
    5: ("int32", "i"),
    6: ("float32", "f"),
    7: ("bool", "?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "Q"),
    11: ("int64", "q"),
    12: ("float64", "d"),
}
STRING, ARRAY = 8, 9
# Unquantized ggml types: a tensor of any other type counts as quantized.
PLAIN_TYPES = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array that was not decoded in full: its item type, length and first items."""

    item_type: str
    length: int
    head: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return self.length

    def to_json(self) -> dict[str, Any]:
        return {"type": f"array[{self.item_type}]", "length": self.length, "head": list(self.head)}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_id: int
    type_name: str  # "Q4_0"; "TYPE_42" when the installed gguf library does not know the id
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    offset: int  # from the start of the data section, as stored
    file_offset: int  # from the start of the file
    n_elements: int
    n_bytes: int | None  # None for a type the installed gguf library does not know

    @property
    def is_quantized(self) -> bool:
        return self.type_name not in PLAIN_TYPES

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "shape": list(self.shape),
            "n_bytes": self.n_bytes,
            "offset": self.file_offset,
        }


@dataclass
class GGUFInfo:
    path: Path
    version: int
    byte_order: str  # "little" or "big"
    alignment: int
    data_offset: int
    file_size: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor] = field(default_factory=list)
    metadata_types: dict[str, str] = field(default_factory=dict)  # key -> "uint32", "array[string]"
    shards: list[Path] = field(default_factory=list)  # a split set's files; empty for one file

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def file_type_name(self) -> str | None:
        return None if self.file_type is None else file_type_name(self.file_type)

    @property
    def tensor_types(self) -> Counter[str]:
        """How many tensors of each ggml type."""
        return Counter(t.type_name for t in self.tensors)

    @property
    def quantized_tensors(self) -> list[GGUFTensor]:
        return [t for t in self.tensors if t.is_quantized]

    @property
    def is_quantized(self) -> bool:
        """True when any tensor is stored in a quantized type (what llama-quantize refuses to redo)."""
        return any(t.is_quantized for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes or 0 for t in self.tensors)

    @property
    def bits_per_weight(self) -> float | None:
        """Tensor bytes * 8 / parameters, as llama.cpp reports it; None if a size is unknown."""
        if not self.tensors or any(t.n_bytes is None for t in self.tensors):
            return None
        return self.tensor_bytes * 8 / max(1, self.parameter_count)

    def summarized_metadata(self, max_items: int = 8) -> dict[str, Any]:
        """Metadata with arrays longer than ``max_items`` replaced by an :class:`ArraySummary`."""
        out: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if isinstance(value, list) and len(value) > max_items:
                item_type = self.metadata_types.get(key, "array").removeprefix("array[").rstrip("]")
                out[key] = ArraySummary(item_type, len(value), tuple(value[:max_items]))
            else:
                out[key] = value
        return out

    def to_json(self, max_items: int = 8) -> dict[str, Any]:
        metadata = {
            key: value.to_json() if isinstance(value, ArraySummary) else value
            for key, value in self.summarized_metadata(max_items).items()
        }
        return {
            "path": str(self.path),
            "version": self.version,
            "byte_order": self.byte_order,
            "alignment": self.alignment,
            "file_size": self.file_size,
            **({"shards": [str(p) for p in self.shards]} if self.shards else {}),
            "architecture": self.architecture,
            "file_type": self.file_type_name,
            "is_quantized": self.is_quantized,
            "parameter_count": self.parameter_count,
            "bits_per_weight": self.bits_per_weight,
            "tensor_types": dict(self.tensor_types),
            "metadata": metadata,
            "tensors": [t.to_json() for t in self.tensors],
        }
