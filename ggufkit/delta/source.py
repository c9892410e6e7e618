"""A model computed tensor by tensor from two checkpoints: base + delta, or target - base.

The pairing is checked up front (same architecture, same names, same shapes but for rows
appended to the vocabulary), so a bad pair fails before anything is written. Each tensor is
computed when it is read and its input pages are given back at once: resident memory stays near
one tensor's inputs and output, whatever the size of the model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from ggufkit.core.errors import DeltaError
from ggufkit.delta.arith import (
    DTYPE_CODES,
    FLOAT_CODES,
    Dtype,
    RoundTrip,
    combine_into,
    output_array,
    to_float32,
)
from ggufkit.delta.rows import RowReader
from ggufkit.formats.hfconfig import load_config
from ggufkit.formats.safetensors import SAFETENSORS_DTYPES, Checkpoint, TensorInfo

Style = Literal["auto", "llmzoo", "fastchat"]
STYLES: tuple[Style, ...] = ("auto", "llmzoo", "fastchat")
_SHOWN = 6  # names listed in an error before "and N more"


@dataclass(frozen=True)
class Pairing:
    """How two checkpoints line up: tensors whose vocabulary rows grew, as (base, other) rows."""

    names: list[str]
    extended: dict[str, tuple[int, int]]


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def check_architectures(
    base_dir: Path, other_dir: Path, base_config: dict[str, Any], other_config: dict[str, Any]
) -> None:
    for key in ("architectures", "model_type"):
        mine, theirs = base_config.get(key), other_config.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise DeltaError(
                f"the base and the delta are different models: {key} is {mine!r} in "
                f"{base_dir / 'config.json'} but {theirs!r} in {other_dir / 'config.json'}",
                hint="give the base model the delta was made from (its model card names it)",
                path=other_dir,
            )


def pair_tensors(
    base: Checkpoint,
    other: Checkpoint,
    *,
    base_vocab: int | None,
    other_vocab: int | None,
    what: str,
    where: Path,
) -> Pairing:
    """Check names and shapes; ``what`` names the other side ("delta" or "target") in errors."""
    base_names, other_names = set(base.names()), set(other.names())
    problems = []
    only_base = sorted(base_names - other_names)
    only_other = sorted(other_names - base_names)
    if only_base:
        problems.append(f"{len(only_base)} only in the base ({_listing(only_base)})")
    if only_other:
        problems.append(f"{len(only_other)} only in the {what} ({_listing(only_other)})")
    extended: dict[str, tuple[int, int]] = {}
    mismatched = []
    for name in sorted(base_names & other_names):
        b, o = base.info(name).shape, other.info(name).shape
        if b == o:
            continue
        # Rows appended to the vocabulary (a new <pad>): the leading dimension grows from the
        # base's vocab_size to the other side's, and nothing else changes.
        grows = (
            len(b) == len(o) >= 1
            and b[1:] == o[1:]
            and b[0] < o[0]
            and base_vocab in (None, b[0])
            and other_vocab in (None, o[0])
        )
        if grows:
            extended[name] = (b[0], o[0])
        else:
            mismatched.append(f"{name}: base {list(b)} vs {what} {list(o)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with different shapes ({_listing(mismatched)})")
    if len({rows for rows in extended.values()}) > 1:
        problems.append(
            "vocabulary rows grow by different amounts ("
            + _listing([f"{n}: {b} -> {o}" for n, (b, o) in extended.items()])
            + ")"
        )
    if problems:
        raise DeltaError(
            f"the base and the {what} do not fit together: tensors " + "; ".join(problems),
            hint=f"check that --base is the model the {what} was made from "
            "(same architecture and size)",
            path=where,
        )
    order = sorted(other.infos(), key=lambda i: (str(i.file), i.offset, i.name))
    return Pairing(names=[info.name for info in order], extended=extended)


def _vocab_size(config: dict[str, Any]) -> int | None:
    value = config.get("vocab_size")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("vocab_size")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ComputedTensors:
    """The bookkeeping of a TensorSource whose tensors are computed on read: ``_infos`` describes
    what ``read(name)`` returns; ``_where`` names the input an unknown name is looked for in."""

    _infos: dict[str, TensorInfo]
    _where: Path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def total_bytes(self) -> int:
        return sum(info.n_bytes for info in self._infos.values())

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise DeltaError(f"tensor {name!r} is not in {self._where}") from None

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())


class CombinedSource(ComputedTensors):
    """A TensorSource whose tensors are ``other + base`` (merge) or ``other - base`` (make).

    ``info(name)`` describes what ``read(name)`` returns: the working dtype (F16, BF16 or F32;
    BF16 as uint16 bits unless ``float32=True``) and the other side's shape. Tensors that are not
    floating point (integer buffers) are passed through from the other side.
    """

    def __init__(
        self,
        base_dir: Path,
        other_dir: Path,
        *,
        dtype: Dtype,
        subtract: bool,
        allow_extra_rows: bool,
        what: str,
    ) -> None:
        self.base_dir, self.other_dir = Path(base_dir), Path(other_dir)
        self.dtype: Dtype = dtype
        self.style: str | None = None  # set by open_merged: the merge style in use
        self.subtract = subtract
        self.round_trip = RoundTrip() if subtract and dtype == "f32" else None
        base_config, other_config = load_config(base_dir), load_config(other_dir)
        check_architectures(self.base_dir, self.other_dir, base_config, other_config)
        with contextlib.ExitStack() as opened:  # both closed again if the pair is refused
            self.base = opened.enter_context(Checkpoint.open(base_dir))
            self.other = opened.enter_context(Checkpoint.open(other_dir))
            self.pairing = pair_tensors(
                self.base,
                self.other,
                base_vocab=_vocab_size(base_config),
                other_vocab=_vocab_size(other_config),
                what=what,
                where=self.other_dir,
            )
            if self.pairing.extended and not allow_extra_rows:
                raise DeltaError(
                    f"the {what} has more vocabulary rows than the base "
                    f"({_listing(sorted(self.pairing.extended))}), which FastChat's "
                    "apply_delta cannot merge",
                    hint="use --style llmzoo (or auto): the new rows get a zero base",
                    path=self.other_dir,
                )
            opened.pop_all()
        self._rows_other, self._rows_base = RowReader(self.other), RowReader(self.base)
        self._passthrough: set[str] = set()
        self._where = self.other_dir
        self._infos = {name: self._merged_info(name) for name in self.pairing.names}

    def _merged_info(self, name: str) -> TensorInfo:
        source = self.other.info(name)
        if source.dtype not in FLOAT_CODES or self.base.info(name).dtype not in FLOAT_CODES:
            self._passthrough.add(name)
            return TensorInfo(name, source.dtype, source.shape, source.file, -1, source.n_bytes)
        n_bytes = (4 if self.dtype == "f32" else 2) * source.n_elements
        return TensorInfo(name, DTYPE_CODES[self.dtype], source.shape, source.file, -1, n_bytes)

    @property
    def extended(self) -> dict[str, tuple[int, int]]:
        """Tensors whose vocabulary grew, as (base rows, other rows)."""
        return dict(self.pairing.extended)

    def read(self, name: str, *, float32: bool = False) -> np.ndarray:
        info = self.info(name)
        other = self.other.read(name)
        if name in self._passthrough:
            result = np.array(other)  # an integer buffer: the other side's value, copied
            self._release(name)
            return result.astype(np.float32) if float32 else result
        out = output_array(info.shape, self.dtype)
        other_code, base_code = self.other.info(name).dtype, self.base.info(name).dtype
        other_size = SAFETENSORS_DTYPES[other_code][1]
        base_size = SAFETENSORS_DTYPES[base_code][1]
        base = self.base.read(name)
        n_base = base.size

        def chunk_done(start: int, stop: int) -> None:
            # Each chunk's input pages go back at once: resident inputs stay near one chunk.
            self.other.release(name, start * other_size, stop * other_size)
            if start < n_base:
                self.base.release(name, start * base_size, min(stop, n_base) * base_size)

        combine_into(
            out,
            other,
            other_code,
            base,
            base_code,
            self.dtype,
            subtract=self.subtract,
            round_trip=self.round_trip,
            name=name,
            chunk_done=chunk_done,
        )
        del base
        del other
        self._release(name)
        return to_float32(out, self.dtype) if float32 else out

    def read_rows(
        self, name: str, rows: slice | np.ndarray, buffer: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows of ``read(name)`` (a slice of the leading dimension, or row indices), computed
        alone: writers go through a tensor in row blocks on several threads, reading only those
        rows (``RowReader``) and never holding the tensor whole. The result goes into
        ``buffer`` (uint8, reused by the caller) when it is large enough."""
        n_rows = self._rows_other.shape(name)[0]
        n_base = self._rows_base.shape(name)[0]
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(n_rows)
            picked = self._rows_other.rows(name, start, stop)
            if name in self._passthrough:
                return np.array(picked)
            base = self._rows_base.rows(name, start, max(start, min(stop, n_base)))
        else:
            picked = self._rows_other.gather(name, rows)
            if name in self._passthrough:
                return picked
            inside = rows < n_base
            if inside.all():
                base = self._rows_base.gather(name, rows)
            else:  # rows appended to the vocabulary: a zero base there
                base = np.zeros(picked.shape, self._rows_base.rows(name, 0, 0).dtype)
                base[inside] = self._rows_base.gather(name, rows[inside])
        out = output_array(picked.shape, self.dtype, buffer)
        other_code, base_code = self.other.info(name).dtype, self.base.info(name).dtype
        combine_into(out, picked, other_code, base, base_code, self.dtype, subtract=self.subtract)
        if isinstance(rows, slice):
            self._rows_other.release_rows(name, start, stop)
            self._rows_base.release_rows(name, start, min(stop, n_base))
        return out

    def release(self, name: str) -> None:
        """Give the inputs' pages back (read() already does, as soon as the tensor is computed)."""
        self._release(name)

    def _release(self, name: str) -> None:
        self.base.release(name)
        self.other.release(name)

    def close(self) -> None:
        for checkpoint in (self.base, self.other):
            # A traceback in flight may still hold a view of a map: it closes when collected,
            # and the error being raised is the one worth seeing.
            with contextlib.suppress(BufferError):
                checkpoint.close()
