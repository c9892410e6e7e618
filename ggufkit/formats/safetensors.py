"""Streaming tensor readers for Hugging Face checkpoints, one tensor at a time.

safetensors files are parsed and validated here (no torch) and read through mmap; pages are given
back with madvise once a tensor is released, so resident memory stays near the largest tensor.
``pytorch_model*.bin`` files go through ``torch.load(weights_only=True, mmap=True)`` only — never
plain pickle.
"""

from __future__ import annotations

import gc
import itertools
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ggufkit.core.errors import InputError, SafetensorsFormatError
from ggufkit.core.fsutil import read_json
from ggufkit.core.log import get_logger

log = get_logger("formats.safetensors")

# safetensors dtype code -> (numpy dtype used to view the bytes, item size)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # raw bits; see bf16_to_float32
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
MAX_DIMS = 8  # GGUF holds 4; 8 leaves room for any real checkpoint
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bit patterns (uint16), rounding to nearest even like torch; NaN kept NaN."""
    as_int = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (as_int + (0x7FFF + ((as_int >> 16) & 1))) >> 16
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, (as_int >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code: F32, F16, BF16, ...
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in the file (safetensors) or -1 (.bin)
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _nonzero_product(shape: list[int]) -> int:
    """The element count the shape would have without its zero dims: it must fit in 64 bits,
    or numpy and the writers overflow on a tensor that holds nothing."""
    product = 1
    for d in shape:
        product *= max(d, 1)
        if product >= 2**63:
            break
    return product


def _shown(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bad(path: Path, problem: str) -> SafetensorsFormatError:
    problem = problem if len(problem) <= 600 else problem[:600] + "..."
    return SafetensorsFormatError(
        f"{path} is not a valid safetensors file: {problem}",
        hint="the download is probably incomplete or corrupt: fetch the file again",
        path=path,
    )


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; raises only SafetensorsFormatError / InputError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _bad(path, f"file is {size} bytes, too short for a header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise _bad(path, f"header length {header_len} exceeds the file size {size}")
            raw = handle.read(header_len)
    except IsADirectoryError as exc:
        raise InputError(f"{path} is a directory, expected a safetensors file", path=path) from exc
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror}", hint="check the file's permissions", path=path
        ) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise _bad(path, "header is nested too deeply") from exc
    except ValueError as exc:  # not UTF-8, not JSON, an integer too long to convert
        raise _bad(path, f"header is not JSON ({str(exc)[:200]})") from exc
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _bad(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise _bad(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_DIMS
            and all(type(d) is int and 0 <= d < 2**63 for d in shape)
            and _nonzero_product(shape) < 2**63
        ):
            raise _bad(path, f"tensor {name!r} has an invalid shape {_shown(shape)}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise _bad(
                path,
                f"tensor {name!r} has data offsets {_shown(offsets)} outside the "
                f"{data_size}-byte data",
            )
        expected = SAFETENSORS_DTYPES[dtype][1] * int(np.prod(shape, dtype=object))
        if offsets[1] - offsets[0] != expected:
            raise _bad(
                path,
                f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes, its shape needs {expected}",
            )
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = TensorInfo(
            name, dtype, tuple(shape), path, data_start + offsets[0], expected
        )
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise _bad(path, f"tensors {first!r} and {second!r} overlap")
    return tensors


def find_weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors when present, else pytorch_model*.bin."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(
            f"{model_dir} is not a directory",
            hint="pass the checkpoint's directory",
            path=model_dir,
        )
    for index_name, pattern in (
        (SAFETENSORS_INDEX, "*.safetensors"),
        (BIN_INDEX, "pytorch_model*.bin"),
    ):
        index = model_dir / index_name
        if index.is_file():
            weight_map = read_json(index, InputError, hint="download the index file again")
            try:
                files = sorted({str(f) for f in weight_map["weight_map"].values()})
            except (KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{index} is not a valid index file ({exc})", path=index) from exc
            resolved = []
            for name in files:
                # Checked by name, not by resolving: in the Hub cache every file is a symlink
                # to a blob outside the snapshot directory.
                candidate = model_dir / name
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise InputError(
                        f"{index} names a file outside the checkpoint: {name}", path=index
                    )
                if not candidate.is_file():
                    raise InputError(
                        f"{index} names {name}, which is missing",
                        hint="download the missing shard",
                        path=index,
                    )
                resolved.append(candidate)
            return resolved
        found = sorted(p for p in model_dir.glob(pattern) if p.is_file())
        if found:
            return found
    raise InputError(
        f"no weights in {model_dir} (looked for *.safetensors and pytorch_model*.bin)",
        hint="download the weights too, e.g. `ggufkit download REPO_ID`",
        path=model_dir,
    )


class TensorSource(Protocol):
    """What the converter and the delta merger read from: a Checkpoint, or base+delta merged on the fly."""

    def names(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...
    def read(self, name: str, *, float32: bool = False) -> np.ndarray: ...
    def release(self, name: str) -> None: ...
    def close(self) -> None: ...


class Checkpoint:
    """The tensors of one checkpoint directory, read one at a time."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._infos: dict[str, TensorInfo] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._torch_state: dict[Path, dict[str, Any]] = {}
        for file in files:
            infos = (
                read_safetensors_header(file)
                if file.suffix == ".safetensors"
                else self._bin_infos(file)
            )
            for name, info in infos.items():
                if name in self._infos:
                    raise InputError(
                        f"tensor {name!r} is in both {self._infos[name].file.name} and {file.name}",
                        path=file,
                    )
                self._infos[name] = info

    @classmethod
    def open(cls, model_dir: str | Path) -> Checkpoint:
        return cls(find_weight_files(Path(model_dir)))

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for _ in range(2):
            busy = []
            for mapped in self._maps.values():
                try:
                    mapped.close()
                except BufferError:  # a numpy view is alive, e.g. in a traceback's frames
                    busy.append(mapped)
            if not busy:
                break
            # Free views held only by cycles: on Windows an open map keeps the file locked.
            gc.collect()
        else:
            log.debug("%d memory maps stay open until their last views are freed", len(busy))
        self._maps.clear()
        self._torch_state.clear()

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise InputError(
                f"tensor {name!r} is not in the checkpoint ({self.files[0].parent})"
            ) from None

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    @property
    def total_bytes(self) -> int:
        return sum(info.n_bytes for info in self._infos.values())

    def read(self, name: str, *, float32: bool = False) -> np.ndarray:
        """The tensor as a read-only numpy view (BF16 as uint16 bits unless ``float32``)."""
        info = self.info(name)
        if info.file.suffix != ".safetensors":
            return self._read_bin(info, float32)
        mapped = self._map(info.file)
        np_dtype, itemsize = SAFETENSORS_DTYPES[info.dtype]
        array = np.frombuffer(
            mapped, dtype=np_dtype, count=info.n_bytes // itemsize, offset=info.offset
        )
        array = array.reshape(info.shape)
        if float32:
            array = (
                bf16_to_float32(array)
                if info.dtype == "BF16"
                else array.astype(np.float32, copy=False)
            )
        return array

    def _map(self, file: Path) -> mmap.mmap:
        mapped = self._maps.get(file)
        if mapped is None:
            with open(file, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[file] = mapped
        return mapped

    def release(self, name: str, start_byte: int = 0, stop_byte: int | None = None) -> None:
        """Give the tensor's pages back to the OS (they stay in the page cache).

        ``start_byte``/``stop_byte`` (within the tensor) release part of it, for readers that
        go through a large tensor in chunks.
        """
        self._advise(name, getattr(mmap, "MADV_DONTNEED", 4), start_byte, stop_byte)

    def prefetch(self, name: str) -> None:
        """Have the OS read the tensor from disk ahead of its use (readahead on page faults is
        small; a tensor is read whole). Costs little when it is in the page cache already."""
        info = self._infos.get(name)
        if info is not None and info.file.suffix == ".safetensors":
            self._map(info.file)
            self._advise(name, getattr(mmap, "MADV_WILLNEED", 3))

    def _advise(self, name: str, advice: int, start_byte: int = 0, stop: int | None = None) -> None:
        info = self._infos.get(name)
        mapped = self._maps.get(info.file) if info else None
        if info is None or mapped is None or not hasattr(mapped, "madvise"):
            return
        first = info.offset + start_byte
        start = first - first % mmap.PAGESIZE
        end = info.offset + (info.n_bytes if stop is None else min(stop, info.n_bytes))
        length = min(end - start, len(mapped) - start)
        if length > 0:
            mapped.madvise(advice, start, length)

    # --- pytorch_model*.bin -------------------------------------------------------------------

    def _load_bin(self, file: Path) -> dict[str, Any]:
        from ggufkit.formats.torchbin import load_bin

        if file not in self._torch_state:
            self._torch_state[file] = load_bin(file)
        return self._torch_state[file]

    def _bin_infos(self, file: Path) -> dict[str, TensorInfo]:
        from ggufkit.formats.torchbin import tensor_types

        infos = {}
        for name, (dtype, shape) in tensor_types(file, self._load_bin(file)).items():
            n_bytes = SAFETENSORS_DTYPES[dtype][1] * int(np.prod(shape, dtype=object))
            infos[name] = TensorInfo(name, dtype, shape, file, -1, n_bytes)
        return infos

    def _read_bin(self, info: TensorInfo, float32: bool) -> np.ndarray:
        from ggufkit.formats.torchbin import tensor_array

        array = tensor_array(self._load_bin(info.file)[info.name])
        if not float32:
            return array
        return (
            bf16_to_float32(array) if info.dtype == "BF16" else array.astype(np.float32, copy=False)
        )
