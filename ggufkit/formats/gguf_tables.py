"""ggml tensor types and llama.cpp file types, as the installed ``gguf`` library defines them.

Cached as JSON per gguf install: importing ``gguf`` pulls numpy and yaml (~0.4 s), which every
``ggufkit quantize`` would pay for. On a cache miss the library is imported the ordinary way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


def _constants_path() -> Path | None:
    spec = importlib.util.find_spec("gguf")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    """ggml type sizes and file type names from the installed gguf library, cached as JSON per
    gguf install (building its enums costs ~30 ms, paid on every command otherwise)."""
    from ggufkit.core import paths
    from ggufkit.core.fsutil import read_keyed_json, write_keyed_json

    path = _constants_path()
    cache: Path | None = None
    if path is not None:
        stat = path.stat()
        key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        cache = paths.cache_file("gguf-tables", key)
        cached = read_keyed_json(cache, key)
        if isinstance(cached, dict):
            return cached
    import gguf.constants as constants  # only on a cache miss (see the module docstring)

    sizes = constants.GGML_QUANT_SIZES
    data = {
        "types": [
            [int(t), t.name, *sizes[t]] for t in constants.GGMLQuantizationType if t in sizes
        ],
        "file_types": {
            str(int(m)): m.name.removeprefix("MOSTLY_").removeprefix("ALL_")
            for m in constants.LlamaFileType
            if m.name != "GUESSED"
        },
    }
    if cache is not None:
        write_keyed_json(cache, key, data)
    return data


@lru_cache(maxsize=1)
def ggml_types() -> dict[int, GGMLType]:
    """ggml tensor types known to the installed ``gguf`` library, by id."""
    return {
        int(row[0]): GGMLType(int(row[0]), str(row[1]), int(row[2]), int(row[3]))
        for row in _tables()["types"]
    }


def ggml_type_by_name(name: str) -> GGMLType | None:
    """A ggml type by (case-insensitive) name, e.g. ``q8_0``; None when unknown."""
    for ggml_type in ggml_types().values():
        if ggml_type.name.lower() == name.lower():
            return ggml_type
    return None


def file_type_name(file_type: int) -> str | None:
    """``general.file_type`` as llama.cpp names it (15 -> ``Q4_K_M``); None when unknown."""
    name = _tables()["file_types"].get(str(file_type))
    return str(name) if name is not None else None
