"""Reader of the pre-GGUF files of 2023: llama.cpp's GGML, GGMF and GGJT, and bloomz.cpp's GGML.

All are little-endian int32 fields: a magic (and, from GGMF on, a version), seven hparams, the
vocabulary as (length, bytes[, float32 score]), then tensors as n_dims, name length, type, the
dims in ggml order (fastest first), the name and the data; GGJT pads the data to 32 bytes of the
file offset. Only the directory is read here: tensor data is read later, a chunk at a time.

Quantized blocks changed twice. Up to GGJT v1 (and in bloomz.cpp) a q4_0/q4_1 block holds float32
scales and packs elements 2j and 2j+1 into the low and high nibble of byte j (``quantize_row_q4_0``
of that era's ggml.c: ``pp[l/2] = vi0 | (vi1 << 4)``); GGJT v2 packs elements j and j+16 instead;
GGJT v3 made the q4_0/q4_1/q8_0 scales float16, which is today's layout.
"""

from __future__ import annotations

import math
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ggufkit.core.errors import LegacyFormatError

MAGIC_GGML = 0x67676D6C  # "ggml": llama.cpp before GGMF, and bloomz.cpp
MAGIC_GGMF = 0x67676D66
MAGIC_GGJT = 0x67676A74
MAGICS = {MAGIC_GGML: "ggml", MAGIC_GGMF: "ggmf", MAGIC_GGJT: "ggjt"}
GGUF_MAGIC = 0x46554747

HPARAM_NAMES = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
# the file-level ftype of llama.cpp's quantize and bloomz.cpp
FTYPE_NAMES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    4: "q4_1_some_f16",
    5: "q4_2",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k_s",
    12: "q3_k_m",
    13: "q3_k_l",
    14: "q4_k_s",
    15: "q4_k_m",
    16: "q5_k_s",
    17: "q5_k_m",
    18: "q6_k",
}

# Per-tensor type ids as the files store them (the ggml_type enum of spring 2023).
F32, F16, Q4_0, Q4_1, Q4_2, Q4_3, Q5_0, Q5_1, Q8_0, Q8_1 = range(10)
TYPE_NAMES = {
    F32: "f32",
    F16: "f16",
    Q4_0: "q4_0",
    Q4_1: "q4_1",
    Q4_2: "q4_2",
    Q4_3: "q4_3",
    Q5_0: "q5_0",
    Q5_1: "q5_1",
    Q8_0: "q8_0",
    Q8_1: "q8_1",
    10: "q2_k",
    11: "q3_k",
    12: "q4_k",
    13: "q5_k",
    14: "q6_k",
    15: "q8_k",
}
# (elements per block, bytes per block) of today's layout, which GGJT v3 already has
_CURRENT_SIZES = {
    F32: (1, 4),
    F16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
}
# float32 scales before GGJT v3
_OLD_SIZES = {Q4_0: (32, 20), Q4_1: (32, 24), Q8_0: (32, 36)}

MAX_NAME = 4096
MAX_VOCAB_ITEM = 4096


@dataclass(frozen=True)
class LegacyTensor:
    name: str
    type_id: int
    dims: tuple[int, ...]  # ggml order: the row length first
    offset: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows first)."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_id, f"type {self.type_id}")


class LegacyVocab(Sequence[tuple[bytes, "float | None"]]):
    """The vocabulary as (text, score or None) pairs, held as one blob with offset and score
    arrays: about the file's own bytes, where a list of tuples took fourteen times as much."""

    def __init__(self, blob: bytes, ends: array[int], scores: array[float] | None) -> None:
        self.blob, self.ends, self.scores = blob, ends, scores

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> tuple[bytes, float | None]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        start = self.ends[index - 1] if index else 0
        score = self.scores[index] if self.scores is not None else None
        return self.blob[start : self.ends[index]], score


@dataclass
class LegacyFile:
    path: Path
    container: str  # "ggml", "ggmf" or "ggjt"
    version: int  # 0 for the unversioned "ggml" magic
    hparams: dict[str, int]
    vocab: Sequence[tuple[bytes, float | None]]
    tensors: list[LegacyTensor]
    size: int
    family: str = ""  # "llama" or "bloom" (bloomz.cpp), from the tensor names

    @property
    def label(self) -> str:
        if self.family == "bloom":
            return "bloomz.cpp GGML"
        return self.container.upper() + (f" v{self.version}" if self.version else "")

    @property
    def layout(self) -> str:
        """Quantized block era: "v1" (float32 scales, interleaved nibbles), "v2", or "v3"."""
        if self.container != "ggjt" or self.version < 2:
            return "v1"
        return "v2" if self.version == 2 else "v3"

    @property
    def ftype_name(self) -> str:
        ftype = self.hparams["ftype"]
        return FTYPE_NAMES.get(ftype, f"ftype {ftype}")

    def tensor(self, name: str) -> LegacyTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def chunks(self, tensor: LegacyTensor, chunk_bytes: int) -> Iterator[np.ndarray]:
        """The tensor's raw bytes, ``chunk_bytes`` at a time (plain reads: no mapping that
        would count the whole file in the process's memory)."""
        with open(self.path, "rb") as fh:
            fh.seek(tensor.offset)
            left = tensor.n_bytes
            while left:
                data = fh.read(min(left, chunk_bytes))
                if not data:
                    raise LegacyFormatError(f"{self.path} shrank while it was read", path=self.path)
                left -= len(data)
                yield np.frombuffer(data, dtype=np.uint8)


def sniff(path: str | Path) -> str | None:
    """The legacy container named by a file's magic, or None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if len(head) < 4:
        return None
    return MAGICS.get(struct.unpack("<I", head)[0])


def is_legacy_file(path: str | Path) -> bool:
    """Whether ``path`` is a file whose magic is a legacy one."""
    path = Path(path)
    return path.is_file() and sniff(path) is not None


def block_size(type_id: int, layout: str) -> tuple[int, int]:
    """(elements, bytes) of one block of ``type_id`` in a file of that layout era."""
    if layout != "v3" and type_id in _OLD_SIZES:
        return _OLD_SIZES[type_id]
    if layout == "v1" and type_id in (Q5_0, Q5_1):
        raise _unsupported(type_id, "in files older than GGJT v2 (their bit layout was revised)")
    if type_id in (Q4_2, Q4_3, Q8_1):
        raise _unsupported(type_id, "(removed from ggml in May 2023)")
    if layout != "v3" and type_id >= 10:
        raise _unsupported(type_id, "before GGJT v3")
    if type_id not in _CURRENT_SIZES:
        raise LegacyFormatError(
            f"unknown tensor type id {type_id}",
            hint="the file is corrupt, or not a llama.cpp/bloomz.cpp model file",
        )
    return _CURRENT_SIZES[type_id]


def _unsupported(type_id: int, when: str) -> LegacyFormatError:
    return LegacyFormatError(
        f"tensor type {TYPE_NAMES[type_id]} {when} is not supported",
        hint="convert the original checkpoint instead, or a f16/f32 legacy file of the model",
    )


class _Cursor:
    HEAD = 64 << 20  # header and vocabulary are parsed from a bytes copy (slicing is cheap)

    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.pos = fh, size, path, 0
        self.head = fh.read(min(self.HEAD, size))  # read(n) allocates n bytes up front

    def take(self, n: int, what: str) -> bytes:
        start = self.skip(n, what)
        if start + n <= len(self.head):
            return self.head[start : start + n]
        self.fh.seek(start)
        return self.fh.read(n)

    def skip(self, n: int, what: str) -> int:
        """Advance past ``n`` bytes (checked to be there); returns where they start."""
        if n < 0 or self.pos + n > self.size:
            raise LegacyFormatError(
                f"{self.path} is truncated: it ends inside {what} (offset {self.pos})",
                hint="the file is incomplete: download or copy it again",
                path=self.path,
            )
        self.pos += n
        return self.pos - n

    def ints(self, n: int, what: str) -> tuple[int, ...]:
        return struct.unpack(f"<{n}i", self.take(4 * n, what))


def read_legacy(path: str | Path) -> LegacyFile:
    """Parse the header, vocabulary and tensor directory; raises LegacyFormatError when corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _parse(_Cursor(fh, os.fstat(fh.fileno()).st_size, path))
    except OSError as exc:
        raise LegacyFormatError(f"cannot read {path}: {exc.strerror}", path=path) from exc


def _parse(cur: _Cursor) -> LegacyFile:
    path = cur.path
    (magic,) = struct.unpack("<I", cur.take(4, "the magic"))
    if magic == GGUF_MAGIC:
        raise LegacyFormatError(f"{path} is already a GGUF file", hint="use it as it is", path=path)
    if magic not in MAGICS:
        raise LegacyFormatError(
            f"{path} is not a GGML/GGMF/GGJT file (magic {magic:#010x})",
            hint="give a llama.cpp or bloomz.cpp .bin from 2023, or a checkpoint directory",
            path=path,
        )
    container = MAGICS[magic]
    version = 0 if container == "ggml" else cur.ints(1, "the version")[0]
    if (container, version) not in {
        ("ggml", 0),
        ("ggmf", 1),
        ("ggjt", 1),
        ("ggjt", 2),
        ("ggjt", 3),
    }:
        raise LegacyFormatError(
            f"{path}: {container.upper()} version {version} is not one llama.cpp ever wrote",
            hint="the file is corrupt",
            path=path,
        )
    hparams = dict(zip(HPARAM_NAMES, cur.ints(7, "the hyperparameters"), strict=True))
    for key in ("n_vocab", "n_embd", "n_head", "n_layer"):
        if not 0 < hparams[key] < 1 << 24:
            raise LegacyFormatError(
                f"{path}: implausible {key} = {hparams[key]}", hint="the file is corrupt", path=path
            )
    vocab = _read_vocab(cur, hparams["n_vocab"], with_scores=container != "ggml")
    legacy = LegacyFile(path, container, version, hparams, vocab, [], cur.size)
    while cur.pos < cur.size:
        legacy.tensors.append(_read_tensor(cur, legacy))
    if not legacy.tensors:
        raise LegacyFormatError(
            f"{path} holds no tensors", hint="the file is incomplete", path=path
        )
    legacy.family = _family(legacy)
    return legacy


def _read_vocab(cur: _Cursor, n_vocab: int, *, with_scores: bool) -> LegacyVocab:
    # Each entry holds at least its length (and score): a count the file cannot hold is refused
    # before anything is read for it.
    if n_vocab * (8 if with_scores else 4) > cur.size - cur.pos:
        raise LegacyFormatError(
            f"{cur.path}: {n_vocab} vocabulary entries cannot fit in the file's "
            f"{cur.size - cur.pos} remaining bytes",
            hint="the file is corrupt or truncated",
            path=cur.path,
        )
    blob = bytearray()
    ends = array("Q")
    scores = array("f") if with_scores else None
    for i in range(n_vocab):
        (length,) = cur.ints(1, f"vocabulary entry {i}")
        if not 0 <= length <= MAX_VOCAB_ITEM:
            raise LegacyFormatError(
                f"{cur.path}: vocabulary entry {i} claims {length} bytes",
                hint="the file is corrupt",
                path=cur.path,
            )
        blob += cur.take(length, f"vocabulary entry {i}")
        ends.append(len(blob))
        if scores is not None:
            scores.append(struct.unpack("<f", cur.take(4, f"score {i}"))[0])
    return LegacyVocab(bytes(blob), ends, scores)


def _read_tensor(cur: _Cursor, legacy: LegacyFile) -> LegacyTensor:
    where = f"tensor header {len(legacy.tensors)}"
    n_dims, name_len, type_id = cur.ints(3, where)
    if not 1 <= n_dims <= 4 or not 0 < name_len <= MAX_NAME:
        raise LegacyFormatError(
            f"{legacy.path}: {where} is corrupt (n_dims {n_dims}, name length {name_len})",
            hint="the file is corrupt or truncated",
            path=legacy.path,
        )
    dims = cur.ints(n_dims, where)
    try:
        name = bytes(cur.take(name_len, where)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LegacyFormatError(
            f"{legacy.path}: {where} has an undecodable name", path=legacy.path
        ) from exc
    if any(d <= 0 for d in dims):
        raise LegacyFormatError(
            f"{legacy.path}: tensor {name} has dims {list(dims)}", path=legacy.path
        )
    block, type_size = block_size(type_id, legacy.layout)
    n_elements = math.prod(dims)  # exact: an int64 product of four int32 dims can wrap to 0
    if n_elements % block or dims[0] % block:
        raise LegacyFormatError(
            f"{legacy.path}: tensor {name} ({TYPE_NAMES.get(type_id)}) has rows of {dims[0]}, "
            f"not whole blocks of {block}",
            hint="the file is corrupt",
            path=legacy.path,
        )
    if legacy.container == "ggjt":
        cur.skip(-cur.pos % 32, f"the padding of {name}")
    n_bytes = n_elements // block * type_size
    offset = cur.skip(n_bytes, f"the data of tensor {name}")
    return LegacyTensor(name, type_id, tuple(dims), offset, n_bytes)


def _family(legacy: LegacyFile) -> str:
    names = {t.name for t in legacy.tensors}
    if "layers.0.attention.query_key_value.weight" in names:
        if legacy.container != "ggml":
            raise LegacyFormatError(
                f"{legacy.path}: a BLOOM model in a {legacy.label} container",
                hint="only bloomz.cpp's own GGML files are supported for BLOOM",
                path=legacy.path,
            )
        return "bloom"
    if "layers.0.attention.wq.weight" in names:
        return "llama"
    shown = ", ".join(sorted(names)[:4])
    raise LegacyFormatError(
        f"{legacy.path}: tensors ({shown}, ...) are neither llama.cpp LLaMA nor bloomz.cpp BLOOM",
        hint="only LLaMA (llama.cpp) and BLOOM (bloomz.cpp) legacy files are supported",
        path=legacy.path,
    )
