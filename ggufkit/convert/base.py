"""The converter core: the architecture registry, the ModelConverter base class and TensorPlan.

A converter turns a checkpoint into a list of :class:`TensorPlan` before any tensor data is read:
names, shapes and GGML types are known up front, so the GGUF header is written first and the data
streams after it, one tensor at a time. Every planned shape is checked against config.json first,
so a bad checkpoint fails before the output file exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from ggufkit.convert.result import OUTTYPE_NAMES
from ggufkit.core.errors import ConversionError, UsageError
from ggufkit.formats.hfconfig import LAYER_INDEX, check_block_count, require
from ggufkit.formats.safetensors import TensorSource, bf16_to_float32

# output type -> the GGML type of 2-D weights (1-D tensors and norms stay F32, like llama.cpp):
# gguf-py's member of the same name
OUTTYPES: dict[str, QT] = {name: QT[name.upper()] for name in OUTTYPE_NAMES}
FILE_TYPES: dict[QT, gguf.LlamaFileType] = {
    QT.F32: gguf.LlamaFileType.ALL_F32,
    QT.F16: gguf.LlamaFileType.MOSTLY_F16,
    QT.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}


def parse_outtype(outtype: str) -> QT:
    try:
        return OUTTYPES[outtype.lower()]
    except KeyError:
        raise UsageError(
            f"unknown output type {outtype!r}",
            hint=f"choose one of {', '.join(OUTTYPES)}; use `ggufkit quantize` for k-quants",
        ) from None


def tensor_nbytes(shape: tuple[int, ...], ggml_type: QT) -> int:
    """Bytes of a tensor of ``shape`` (numpy order, rows last) stored as ``ggml_type``."""
    block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return n // block * type_size


def block_zero_name(tensor_map: gguf.TensorNameMap, block_count: int, hf_name: str) -> str | None:
    """The GGUF name of ``hf_name`` from a map built for block 0 only: a block's tensor is looked
    up as block 0's and renumbered, so the map costs the same for 4 or a billion blocks."""
    suffixes = (".weight", ".bias")
    match = LAYER_INDEX.search(hf_name)
    if match is None:
        return tensor_map.get_name(hf_name, try_suffixes=suffixes)
    digits, (start, stop) = match.group(1), match.span(1)
    index = int(digits) if len(digits) < 10 else block_count
    if index >= block_count:
        return None
    mapped = tensor_map.get_name(hf_name[:start] + "0" + hf_name[stop:], try_suffixes=suffixes)
    if mapped is not None and mapped.startswith("blk.0."):
        return f"blk.{index}." + mapped[len("blk.0.") :]
    return mapped  # a model-wide tensor kept under a block's name (rope_freqs), or None


@dataclass
class TensorPlan:
    """One output tensor, known before its data is read.

    ``shape`` is the numpy shape as written (the GGUF header stores it reversed). ``produce``
    returns the finished float array (f32/f16) in that shape; the writer converts it to
    ``ggml_type``. When ``source_name`` is set the writer may instead stream that source tensor in
    row blocks (reordered by ``row_order``: output row i is source row ``row_order[i]``), which
    keeps memory at a few blocks and lets bf16/f16 data be converted or copied without a float32
    intermediate; the result is the same bytes as ``produce`` would give.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: QT
    produce: Callable[[], np.ndarray]
    source_bytes: int
    source_name: str | None = None
    row_order: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_bytes(self) -> int:
        return tensor_nbytes(self.shape, self.ggml_type)


# HF architecture name -> converter, filled by ``@register`` as ``ggufkit.convert.arch``'s
# modules are imported (``ggufkit.convert.registry`` imports them and looks converters up).
REGISTRY: dict[str, type[ModelConverter]] = {}

C = TypeVar("C", bound="type[ModelConverter]")


def register(*hf_architectures: str) -> Callable[[C], C]:
    """Class decorator: the converter handles these ``architectures`` names of config.json."""

    def decorate(cls: C) -> C:
        for name in hf_architectures:
            if name in REGISTRY and REGISTRY[name] is not cls:
                raise RuntimeError(f"{name} is registered twice ({REGISTRY[name].__name__})")
            REGISTRY[name] = cls
        cls.hf_architectures = tuple(hf_architectures)
        return cls

    return decorate


class ModelConverter(ABC):
    """Base of the per-architecture converters (one module per architecture, ``@register``-ed).

    Subclasses set ``gguf_arch``, read and check their hyperparameters in ``read_config`` (called
    at the end of ``__init__``) and implement ``set_gguf_parameters``, ``set_vocab`` and
    ``expected_shapes``; most need nothing else, since ``plan_tensors`` maps every source tensor
    through ``gguf.TensorNameMap`` and asks ``row_order`` for per-tensor reordering.
    """

    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    hf_architectures: ClassVar[tuple[str, ...]] = ()
    accepts_pre_tokenizer: ClassVar[bool] = False  # byte-level BPE vocabularies only
    # Buffers some checkpoints carry that are not weights.
    skip_suffixes: ClassVar[tuple[str, ...]] = (
        ".rotary_emb.inv_freq",
        ".attention.masked_bias",
        ".attention.bias",
    )

    def __init__(
        self,
        model_dir: Path,
        config: dict[str, Any],
        source: TensorSource,
        *,
        outtype: str = "f16",
    ) -> None:
        self.model_dir = Path(model_dir)
        # pre_tokenizer (set by convert() when accepts_pre_tokenizer): the BPE vocabulary's
        # tokenizer.ggml.pre instead of the detected one.
        self.pre_tokenizer: str | None = None
        self.config = config
        self.config_path = self.model_dir / "config.json"
        self.source = source
        self.outtype = parse_outtype(outtype)
        self.notes: list[str] = []  # vocab / pre-tokenizer remarks for ConvertResult
        self.block_count = self.hparam("num_hidden_layers", "n_layer", "n_layers")
        # Before anything is built per layer: the config's layers must be in the tensor names.
        check_block_count(
            self.block_count, source.names(), config_path=self.config_path, model_dir=model_dir
        )
        # Block 0's names stand for every block (see map_name): the map costs ~45 KB a block.
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, 1)
        self.read_config()

    # --- config access ----------------------------------------------------------------------

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def hparam(self, *keys: str, kind: type = int) -> Any:
        """The first of ``keys`` in config.json; a clear ConfigError when none is there."""
        return require(self.config, *keys, path=self.config_path, kind=kind)

    def hparam_or(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            if self.config.get(key) is not None:
                return self.config[key]
        return default

    # --- hooks for subclasses ---------------------------------------------------------------

    @classmethod
    def check_native(cls, model_dir: Path, config: dict[str, Any]) -> None:
        """Raise NativeUnsupportedError for a checkpoint this converter does not handle (an
        unknown tokenizer kind, a config setting it does not implement) but the upstream engine
        may; ``convert(engine="auto")`` then falls back to upstream. Called before anything is
        opened or written; reads only small files."""
        return None  # the default converter takes what its config check accepts

    @abstractmethod
    def read_config(self) -> None:
        """Read and check the architecture's hyperparameters; a bad config raises ConfigError."""

    @abstractmethod
    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        """The architecture's ``<arch>.*`` keys."""

    @abstractmethod
    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        """The ``tokenizer.*`` keys."""

    @abstractmethod
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name -> numpy shape the config implies, for every required tensor."""

    def optional_tensors(self) -> set[str]:
        """GGUF names that may be absent (e.g. ``output.weight`` with tied embeddings)."""
        return set()

    def row_order(self, hf_name: str, gguf_name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """Row permutation to apply to a tensor (output row i = source row ``order[i]``)."""
        return None

    # --- shared machinery -------------------------------------------------------------------

    def map_name(self, hf_name: str) -> str:
        mapped = block_zero_name(self.tensor_map, self.block_count, hf_name)
        if mapped is None:
            raise ConversionError(
                f"tensor {hf_name!r} of {self.model_dir} has no {self.arch_name} counterpart",
                hint="the checkpoint does not match its config.json `architectures`",
                path=self.model_dir,
            )
        return mapped

    def choose_type(self, gguf_name: str, shape: tuple[int, ...]) -> QT:
        """llama.cpp's policy: 1-D tensors, norms and non-weights in F32, the rest in ``outtype``."""
        if (
            len(shape) <= 1
            or gguf_name.endswith("_norm.weight")
            or not gguf_name.endswith(".weight")
        ):
            return QT.F32
        if self.outtype == QT.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0] != 0:
            return QT.F16  # rows that do not fill whole blocks, as upstream falls back
        return self.outtype

    def plan_from_source(
        self,
        hf_name: str,
        gguf_name: str,
        *,
        row_order: np.ndarray | None = None,
        ggml_type: QT | None = None,
    ) -> TensorPlan:
        """A plan that streams one source tensor (optionally row-reordered) into the output."""
        info = self.source.info(hf_name)
        shape = tuple(info.shape)
        if row_order is not None and len(row_order) != shape[0]:
            raise ConversionError(f"row order for {hf_name} does not fit its shape {shape}")
        source = self.source

        def produce() -> np.ndarray:
            array = source.read(hf_name)
            if info.dtype == "BF16":
                array = bf16_to_float32(array)
            elif array.dtype not in (np.float16, np.float32):
                array = array.astype(np.float32)
            return array[row_order] if row_order is not None else array

        return TensorPlan(
            name=gguf_name,
            shape=shape,
            ggml_type=ggml_type or self.choose_type(gguf_name, shape),
            produce=produce,
            source_bytes=info.n_bytes,
            source_name=hf_name,
            row_order=row_order,
        )

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith(self.skip_suffixes)

    def plan_tensors(self) -> list[TensorPlan]:
        plans = []
        for hf_name in self.source.names():
            if self.skip(hf_name):
                continue
            gguf_name = self.map_name(hf_name)
            shape = tuple(self.source.info(hf_name).shape)
            try:
                order = self.row_order(hf_name, gguf_name, shape)
            except ValueError as exc:  # a head count the rows cannot be split into
                raise ConversionError(
                    f"tensor {hf_name} has shape {list(shape)}, which the head counts of "
                    f"{self.config_path} cannot split ({exc})",
                    hint="the weights do not belong to this config.json (or are corrupt)",
                    path=self.model_dir,
                ) from exc
            plans.append(self.plan_from_source(hf_name, gguf_name, row_order=order))
        return plans

    def validate(self, plans: list[TensorPlan]) -> None:
        """Every tensor the config implies is there once, with the shape it implies."""
        expected = self.expected_shapes()
        seen: set[str] = set()
        for plan in plans:
            if plan.name in seen:
                raise ConversionError(f"tensor {plan.name} would be written twice")
            seen.add(plan.name)
            want = expected.get(plan.name)
            if want is not None and tuple(want) != tuple(plan.shape):
                hf = f" ({plan.source_name})" if plan.source_name else ""
                raise ConversionError(
                    f"tensor {plan.name}{hf} has shape {list(plan.shape)} but "
                    f"{self.config_path} implies {list(want)}",
                    hint="the weights do not belong to this config.json (or are corrupt)",
                    path=self.model_dir,
                )
        missing = sorted(set(expected) - seen - self.optional_tensors())
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConversionError(
                f"{self.model_dir} lacks tensor(s) {', '.join(missing[:3])}{more}",
                hint="the checkpoint is incomplete: download every weight shard",
                path=self.model_dir,
            )
