"""A base model with a LoRA adapter merged on the fly: a TensorSource, by tensor or by row block.

Each targeted weight is ``base + scale * B @ A`` computed for the rows asked for (A and B are
small: r x in and out x r) in float32, and the sum rounded once to the working dtype: PEFT keeps
a loaded adapter in float32 and ``merge_and_unload()`` adds its float32 update into the weight in
place. Rows are read and given back as merge-delta's are (``rows.RowReader``). Untargeted tensors pass through, cast to the working dtype
(the base's own by default, so nothing changes there). Base and adapter are checked against each
other up front: an adapter made for another base fails before anything is written.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import AdapterError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.delta.arith import (
    DTYPE_CODES,
    DTYPES,
    FLOAT_CODES,
    Dtype,
    RoundTrip,
    output_array,
    to_float32,
    values_as,
)
from ggufkit.delta.lora import Adapter, LoraPair, delta_shape, read_adapter
from ggufkit.delta.rows import RowReader
from ggufkit.delta.source import ComputedTensors
from ggufkit.formats.hfconfig import load_config
from ggufkit.formats.safetensors import Checkpoint, TensorInfo, float32_to_bf16

log = get_logger(__name__)

_DTYPE_OF: dict[str, Dtype] = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
_EMBEDDINGS = ("embed_tokens.weight", "word_embeddings.weight", "wte.weight", "embed_in.weight")
_HEADS = ("lm_head.weight", "embed_out.weight")
_OTHER_BASE = "give the base model the adapter was trained on (adapter_config.json names it)"


class LoraSource(ComputedTensors):
    """``base + scale * B @ A`` for every weight the adapter targets; see the module doc."""

    round_trip: RoundTrip | None = None  # make-delta's statistics: never for a merge

    def __init__(self, base_dir: Path, adapter_dir: Path, *, dtype: str | None = None) -> None:
        self.base_dir, self.adapter_dir = Path(base_dir), Path(adapter_dir)
        self.config = load_config(self.base_dir)
        with contextlib.ExitStack() as opened:  # both closed again if the pair is refused
            self.adapter: Adapter = opened.enter_context(read_adapter(self.adapter_dir))
            self.base = opened.enter_context(Checkpoint.open(self.base_dir))
            self._check_architecture()
            self.dtype: Dtype = self._working_dtype(dtype)
            self.pairs: dict[str, LoraPair] = {}
            self.notes: list[str] = []
            self.extended: dict[str, tuple[int, int]] = {}
            self._replaced: dict[str, str] = {}  # base name -> adapter tensor replacing it
            self._plan()
            opened.pop_all()
        self._rows_base, self._rows_adapter = RowReader(self.base), RowReader(self.adapter.weights)
        self._factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._where = self.base_dir
        self._infos = {info.name: self._merged_info(info) for info in self._order()}

    # --- checks and plan ---------------------------------------------------------------------

    def _check_architecture(self) -> None:
        mapping = self.adapter.config.get("auto_mapping") or {}
        trained_on = mapping.get("base_model_class") if isinstance(mapping, dict) else None
        architectures = self.config.get("architectures") or []
        if isinstance(trained_on, str) and architectures and trained_on not in architectures:
            raise AdapterError(
                f"the adapter {self.adapter_dir} was trained on a {trained_on}, but the base "
                f"{self.base_dir} is a {', '.join(map(str, architectures))}",
                hint=_OTHER_BASE,
                path=self.adapter_dir,
            )

    def _working_dtype(self, dtype: str | None) -> Dtype:
        if dtype is not None:
            if dtype not in DTYPES:
                raise UsageError(
                    f"unknown dtype {dtype!r}", hint="use one of: " + ", ".join(DTYPES)
                )
            return dtype
        counts = Counter(i.dtype for i in self.base.infos() if i.dtype in _DTYPE_OF)
        code = counts.most_common(1)[0][0] if counts else "F32"
        return _DTYPE_OF[code]

    def _plan(self) -> None:
        names = set(self.base.names())
        tied = "lm_head.weight" not in names and bool(self.config.get("tie_word_embeddings", True))
        embedding = next((n for n in sorted(names) if n.endswith(_EMBEDDINGS)), None)
        for target, pair in self.adapter.pairs.items():
            where = target
            if target not in names and target.endswith(_HEADS) and tied and embedding:
                if embedding in self.adapter.pairs:
                    raise AdapterError(
                        f"the adapter {self.adapter_dir} has LoRA on both {target} and "
                        f"{embedding}, which the base ties together (one matrix)",
                        hint="train the adapter with one of them only",
                        path=self.adapter_dir,
                    )
                where = embedding
                self.notes.append(
                    f"{target} is tied to {embedding} in the base: its LoRA is merged into the "
                    "shared matrix, as PEFT's merge_and_unload() does (the input embeddings change "
                    "too, unlike the unmerged adapter)"
                )
                log.warning("%s", self.notes[-1])
            if where not in names:
                raise AdapterError(
                    f"the adapter {self.adapter_dir} changes {target}, which the base "
                    f"{self.base_dir} does not have",
                    hint=_OTHER_BASE,
                    path=self.adapter_dir,
                )
            self.pairs[where] = pair
        for name, tensor in self.adapter.saved.items():
            if name not in names and name.endswith(_HEADS) and tied:
                if ".base_layer." in tensor:  # the tied embedding saved a second time
                    continue
                raise AdapterError(
                    f"the adapter {self.adapter_dir} saves its own {name} (modules_to_save), but "
                    f"the base {self.base_dir} ties it to the input embeddings",
                    hint="merge with PEFT's merge_and_unload() (it unties them) and convert that",
                    path=self.adapter_dir,
                )
            if name not in names:
                raise AdapterError(
                    f"the adapter {self.adapter_dir} saves {name}, which the base does not have",
                    hint=_OTHER_BASE,
                    path=self.adapter_dir,
                )
            self._replaced[name] = tensor
        for name in sorted(names):
            self._check_shape(name)

    def _check_shape(self, name: str) -> None:
        base_shape = tuple(self.base.info(name).shape)
        shape = self._shape(name)
        if shape != base_shape:
            grows = len(shape) == len(base_shape) >= 1 and shape[1:] == base_shape[1:]
            if not (grows and shape[0] > base_shape[0] and name in self._replaced):
                raise AdapterError(
                    f"the adapter {self.adapter_dir} does not fit the base {self.base_dir}: "
                    f"{name} is {list(base_shape)} in the base but {list(shape)} in the adapter",
                    hint=_OTHER_BASE,
                    path=self.adapter_dir,
                )
            self.extended[name] = (base_shape[0], shape[0])
        pair = self.pairs.get(name)
        if pair is not None and delta_shape(self.adapter, pair) != shape:
            raise AdapterError(
                f"the adapter {self.adapter_dir} does not fit the base {self.base_dir}: "
                f"B @ A for {pair.module} is {list(delta_shape(self.adapter, pair))}, the "
                f"weight is {list(shape)}",
                hint=_OTHER_BASE,
                path=self.adapter_dir,
            )

    def _shape(self, name: str) -> tuple[int, ...]:
        if name in self._replaced:
            return tuple(self.adapter.info(self._replaced[name]).shape)
        return tuple(self.base.info(name).shape)

    def _order(self) -> list[TensorInfo]:
        return sorted(self.base.infos(), key=lambda i: (str(i.file), i.offset, i.name))

    def _merged_info(self, base: TensorInfo) -> TensorInfo:
        shape = self._shape(base.name)
        if base.dtype not in FLOAT_CODES:
            return base
        n_bytes = (4 if self.dtype == "f32" else 2) * int(np.prod(shape, dtype=np.int64))
        return TensorInfo(base.name, DTYPE_CODES[self.dtype], shape, base.file, -1, n_bytes)

    # --- the TensorSource protocol -----------------------------------------------------------

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary size after a resize the adapter brings (None: unchanged)."""
        return max((rows for _, rows in self.extended.values()), default=None)

    def read(self, name: str, *, float32: bool = False) -> np.ndarray:
        rows = (self.info(name).shape or [1])[0]
        out = self.read_rows(name, slice(0, rows))
        out = out.reshape(self.info(name).shape)
        self.release(name)
        if float32:
            floating = self.info(name).dtype in FLOAT_CODES
            return to_float32(out, self.dtype) if floating else out.astype(np.float32)
        return out

    def read_rows(
        self, name: str, rows: slice | np.ndarray, buffer: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows of ``read(name)`` (a slice of the leading dimension, or row indices)."""
        info = self.info(name)
        replaced = self._replaced.get(name)
        reader, source_name = (
            (self._rows_adapter, replaced) if replaced else (self._rows_base, name)
        )
        checkpoint = self.adapter.weights if replaced else self.base
        code = checkpoint.info(source_name).dtype
        picked = _pick(reader, source_name, rows)
        if info.dtype not in FLOAT_CODES:
            return np.array(picked)
        out = output_array(picked.shape, self.dtype, buffer)
        pair = self.pairs.get(name)
        if pair is not None:
            # PEFT keeps the adapter in float32 (autocast_adapter_dtype) and adds its float32
            # update into the weight in place: one rounding of base + update to the dtype
            values = values_as(picked, code, "f32") + self._delta_rows(name, pair, rows)
            out[...] = float32_to_bf16(values) if self.dtype == "bf16" else values
        elif _DTYPE_OF.get(code) == self.dtype:
            out[...] = picked  # the same bits
        else:
            values = values_as(picked, code, self.dtype)
            out[...] = float32_to_bf16(values) if self.dtype == "bf16" else values
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(reader.shape(source_name)[0])
            reader.release_rows(source_name, start, stop)
        return out

    def _delta_rows(self, name: str, pair: LoraPair, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of ``scale * B @ A`` (as the base stores the weight), in float32."""
        a, b = self._ab(name, pair)
        if pair.transposed:  # rows of (B @ A).T are columns of A
            picked_a = a[:, rows]
            delta = picked_a.T @ b.T
        else:
            delta = b[rows] @ a
        delta *= np.float32(pair.scale)
        return delta

    def _ab(self, name: str, pair: LoraPair) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            factors = self._factors.get(name)
            if factors is None:
                weights = self.adapter.weights
                a = np.array(weights.read(pair.a, float32=True), dtype=np.float32)
                b = np.array(weights.read(pair.b, float32=True), dtype=np.float32)
                factors = self._factors[name] = (a, b)
            return factors

    def release(self, name: str) -> None:
        with self._lock:
            self._factors.pop(name, None)
        self.base.release(name)
        if name in self._replaced:
            self.adapter.weights.release(self._replaced[name])

    def close(self) -> None:
        for checkpoint in (self.base, self.adapter.weights):
            with contextlib.suppress(BufferError):
                checkpoint.close()


def _pick(reader: RowReader, name: str, rows: slice | np.ndarray) -> np.ndarray:
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(reader.shape(name)[0])
        return reader.rows(name, start, stop)
    return reader.gather(name, rows)


def merged_config(source: LoraSource) -> dict[str, Any]:
    """The base's config.json with the vocabulary size the adapter's saved embeddings bring."""
    config = dict(source.config)
    if source.vocab_size is not None:
        config["vocab_size"] = source.vocab_size
    return config
