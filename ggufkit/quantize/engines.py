"""How a quantization runs: the built ``llama-quantize`` binary behind the :class:`Engine` interface.

The engine takes :class:`QuantizeOptions`, offers a dry run (llama.cpp's ``--dry-run``: reads only
the header, reports the output size and whether an importance matrix is required) and reports
progress from llama.cpp's own ``[ i/ n]`` tensor lines. Tests put a stand-in behind the interface.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import (
    InputError,
    QuantizeError,
    ToolFailedError,
    UsageError,
)
from ggufkit.quantize.types import COPY, QuantType, TypeTable, table_from_binary

if TYPE_CHECKING:
    from ggufkit.llamacpp.runner import ToolResult

KV_KINDS = ("int", "float", "bool", "str")
MAX_KV_KEY = 127  # llama_model_kv_override.key and .val_str are char[128]

ProgressCallback = Callable[[int, int], None]  # (tensors done, tensors in all)

_PROGRESS = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\]")
_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+)\s*MiB(?:\s*\(([\d.]+) BPW\))?")
_NEEDS_IMATRIX = re.compile(r"will require an imatrix|requires an importance matrix")
_BAD_GGML_TYPE = re.compile(r"invalid ggml_type '([^']*)'")
_REFUSED_NO_IMATRIX = re.compile(r"requires an importance matrix|Missing importance matrix")

IMATRIX_HINT = (
    "make one from a calibration text: `ggufkit imatrix MODEL-f16.gguf --corpus calibration.txt`, "
    "then pass `--imatrix MODEL-imatrix.gguf`"
)


def may_need_imatrix(quant_type: QuantType) -> bool:
    """Whether a dry run must ask llama.cpp. Its rule (tensor_requires_imatrix in
    src/llama-quant.cpp): only IQ1_S/IQ1_M/IQ2_*/IQ3_XXS tensors, and Q2_K tensors of a Q2_K_S
    file, need an importance matrix — so only the IQ* mixes and Q2_K_S can; whether this model's
    mix really does is the dry run's answer."""
    return quant_type.name.startswith("IQ") or quant_type.name == "Q2_K_S"


@dataclass(frozen=True)
class KVOverride:
    """``--override-kv KEY=TYPE:VALUE`` as llama.cpp parses it (TYPE: int, float, bool, str)."""

    key: str
    kind: str
    value: int | float | bool | str

    def __str__(self) -> str:
        value = str(self.value).lower() if self.kind == "bool" else self.value
        return f"{self.key}={self.kind}:{value}"


def parse_kv_override(text: str) -> KVOverride:
    """Parse and check ``KEY=TYPE:VALUE`` before anything runs; errors are UsageErrors."""
    hint = "write KEY=TYPE:VALUE with TYPE int, float, bool or str, e.g. general.name=str:my-model"
    key, sep, rest = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--override-kv {text!r} has no KEY=", hint=hint)
    if len(key.encode()) > MAX_KV_KEY:
        raise UsageError(f"--override-kv key {key[:40]!r}... is longer than {MAX_KV_KEY} bytes")
    kind, sep, raw = rest.partition(":")
    if not sep or kind not in KV_KINDS:
        raise UsageError(f"--override-kv {text!r}: unknown value type {kind!r}", hint=hint)
    value: int | float | bool | str
    try:
        if kind == "int":
            value = int(raw)
        elif kind == "float":
            value = float(raw)
        elif kind == "bool":
            if raw not in ("true", "false"):
                raise ValueError(raw)
            value = raw == "true"
        else:
            if len(raw.encode()) > MAX_KV_KEY:
                raise UsageError(f"--override-kv {key}: a str value is at most {MAX_KV_KEY} bytes")
            value = raw
    except ValueError as exc:
        raise UsageError(
            f"--override-kv {text!r}: {raw!r} is not a valid {kind}", hint=hint
        ) from exc
    return KVOverride(key, kind, value)


def parse_tensor_type(text: str) -> str:
    """``--tensor-type NAME=TYPE`` checked as llama-quantize checks it (a name, a ggml type),
    before anything runs; NAME is matched by llama.cpp against tensor names (``attn_v``,
    ``blk.0.ffn_down``)."""
    from ggufkit.formats.ggufinfo import ggml_type_by_name

    name, sep, kind = text.partition("=")
    if not sep or not name or not kind:
        raise UsageError(
            f"--tensor-type {text!r} is not NAME=TYPE", hint="e.g. --tensor-type attn_v=q8_0"
        )
    if ggml_type_by_name(kind.upper()) is None:
        raise UsageError(
            f"--tensor-type {text!r}: {kind!r} is not a ggml tensor type",
            hint="use a ggml type name such as q8_0, q6_k, q4_k or f16 (not a mix like q4_k_m)",
        )
    return f"{name.lower()}={kind.lower()}"


def parse_prune_layers(text: str) -> tuple[int, ...]:
    """``--prune-layers 3,7``: layer numbers, sorted and unique, as llama-quantize keeps them."""
    try:
        layers = sorted({int(part) for part in text.split(",")})
    except ValueError as exc:
        raise UsageError(
            f"--prune-layers {text!r} is not a comma-separated list of layer numbers",
            hint="e.g. --prune-layers 20,21",
        ) from exc
    if not layers or layers[0] < 0:
        raise UsageError(f"--prune-layers {text!r}: layer numbers start at 0")
    return tuple(layers)


@dataclass(frozen=True)
class QuantizeOptions:
    """The llama-quantize options ggufkit exposes; the same for both engines."""

    imatrix: Path | None = None
    threads: int | None = None
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    override_kv: tuple[KVOverride, ...] = field(default_factory=tuple)
    tensor_types: tuple[str, ...] = ()  # "NAME=TYPE": llama-quantize's --tensor-type
    prune_layers: tuple[int, ...] = ()
    keep_split: bool = False  # a split input's shards kept as they are

    def binary_flags(self) -> list[str]:
        """The flags in front of the positional arguments, in llama-quantize's spelling."""
        flags: list[str] = []
        if self.allow_requantize:
            flags.append("--allow-requantize")
        if self.leave_output_tensor:
            flags.append("--leave-output-tensor")
        if self.pure:
            flags.append("--pure")
        if self.imatrix is not None:
            flags += ["--imatrix", str(self.imatrix)]
        if self.output_tensor_type:
            flags += ["--output-tensor-type", self.output_tensor_type]
        if self.token_embedding_type:
            flags += ["--token-embedding-type", self.token_embedding_type]
        for override in self.override_kv:
            flags += ["--override-kv", str(override)]
        for tensor_type in self.tensor_types:
            flags += ["--tensor-type", tensor_type]
        if self.prune_layers:
            flags += ["--prune-layers", ",".join(str(n) for n in self.prune_layers)]
        if self.keep_split:
            flags.append("--keep-split")
        return flags


@dataclass(frozen=True)
class DryRun:
    requires_imatrix: bool
    size_bytes: int | None  # the tensor data size llama.cpp computed, None if not reported
    bits_per_weight: float | None = None  # over all tensors, as llama.cpp reports it


def parse_dry_run(text: str) -> DryRun:
    size = _QUANT_SIZE.search(text)
    return DryRun(
        requires_imatrix=bool(_NEEDS_IMATRIX.search(text)),
        size_bytes=int(float(size.group(1)) * 1024 * 1024) if size else None,
        bits_per_weight=float(size.group(2)) if size and size.group(2) else None,
    )


@dataclass(frozen=True)
class RunReport:
    log_path: Path | None
    bits_per_weight: float | None  # as llama.cpp reports it ("quant size = ... (4.64 BPW)")
    tool_seconds: float | None = None  # the tool's lifetime, spawn to reap; the rest is ours


class LogWatcher:
    """Follows llama.cpp's quantize log: ``[ 12/ 201] blk.0.attn_q.weight ...`` lines go to the
    progress callback; the closing ``quant size = ... (4.64 BPW)`` line is kept."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.bits_per_weight: float | None = None

    def __call__(self, line: str) -> None:
        match = _PROGRESS.match(line)
        if match:
            if self.callback is not None:
                self.callback(int(match.group(1)), int(match.group(2)))
        elif (size := _QUANT_SIZE.search(line)) and size.group(2):
            self.bits_per_weight = float(size.group(2))


def _failure_text(error: ToolFailedError) -> str:
    """The tail, and the start of the log: llama-quantize prints its reason, then its usage."""
    text = error.tail
    if error.log_path is not None:
        try:
            with open(error.log_path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(1 << 20) + "\n" + text
        except OSError:
            pass
    return text


def explain_failure(error: ToolFailedError, options: QuantizeOptions) -> Exception:
    """Turn llama.cpp's messages for bad options into usage/input errors; others stay as they are."""
    text = _failure_text(error)
    bad_type = _BAD_GGML_TYPE.search(text)
    if bad_type:
        which = (
            "--output-tensor-type"
            if bad_type.group(1) == options.output_tensor_type
            else "--token-embedding-type"
        )
        return UsageError(
            f"{which} {bad_type.group(1)!r} is not a ggml tensor type",
            hint="use a ggml type name such as q8_0, q6_k, q4_k or f16",
        )
    if options.imatrix is None and _REFUSED_NO_IMATRIX.search(text):
        return QuantizeError(
            "llama.cpp refuses this type without an importance matrix", hint=IMATRIX_HINT
        )
    if options.imatrix is not None and "failed to load imatrix" in text:
        return InputError(
            f"{options.imatrix} is not an importance matrix llama.cpp can read",
            hint="make one with `ggufkit imatrix MODEL.gguf --corpus TEXT`",
            path=options.imatrix,
        )
    return error


class Engine(ABC):
    name: str

    @abstractmethod
    def table(self) -> TypeTable: ...

    @abstractmethod
    def dry_run(self, source: Path, quant_type: QuantType, options: QuantizeOptions) -> DryRun: ...

    @abstractmethod
    def run(
        self,
        source: Path,
        output: Path,
        quant_type: QuantType,
        options: QuantizeOptions,
        on_progress: ProgressCallback | None = None,
    ) -> RunReport:
        """Quantize ``source`` into ``output``."""


class BinaryEngine(Engine):
    name = "binary"

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def table(self) -> TypeTable:
        return table_from_binary(self.binary)

    @staticmethod
    def _path_arg(path: Path) -> str:
        # llama-quantize takes anything starting with "--" for an option.
        return str(path.absolute()) if str(path).startswith("-") else str(path)

    def command(
        self, source: Path, output: Path | None, quant_type: QuantType, options: QuantizeOptions
    ) -> list[str]:
        """The exact argument list (also what a user would type to reproduce it by hand)."""
        args = [str(self.binary), *options.binary_flags()]
        if output is None:
            args.insert(1, "--dry-run")
        args.append(self._path_arg(source))
        if output is not None:
            args.append(self._path_arg(output))
        args.append(quant_type.name)
        if options.threads and output is not None:
            args.append(str(options.threads))
        return args

    def dry_run(self, source: Path, quant_type: QuantType, options: QuantizeOptions) -> DryRun:
        args = self.command(source, None, quant_type, options)
        result = self._run(args, f"--dry-run {quant_type.name}", options, merge_stderr=True)
        return parse_dry_run(result.stdout)

    def run(
        self,
        source: Path,
        output: Path,
        quant_type: QuantType,
        options: QuantizeOptions,
        on_progress: ProgressCallback | None = None,
    ) -> RunReport:
        watcher = LogWatcher(on_progress)
        result = self._run(
            self.command(source, output, quant_type, options),
            quant_type.name,
            options,
            on_line=watcher,
            hint="the lines above are llama-quantize's own; the full log has the rest",
        )
        return RunReport(result.log_path, watcher.bits_per_weight, result.seconds)

    @staticmethod
    def _run(args: list[str], what: str, options: QuantizeOptions, **kwargs: Any) -> ToolResult:
        """llama-quantize with its own log; its messages about bad options become ours."""
        from ggufkit.llamacpp.runner import new_log_path, run_tool

        log_name = "quantize-" + what.removeprefix("--").replace(" ", "-")
        try:
            # Tied to ggufkit without a watcher process where the system can (llamacpp.lifeline):
            # quantize's start-up has no room for one (tests/test_quantize_startup.py).
            return run_tool(
                args,
                what=f"llama-quantize {what}",
                log_path=new_log_path(log_name),
                watcher=False,
                **kwargs,
            )
        except ToolFailedError as exc:
            raise explain_failure(exc, options) from exc


def binary_engine() -> BinaryEngine:
    """The built ``llama-quantize``; ToolMissingError (suggesting ``ggufkit build``) without it."""
    from ggufkit.llamacpp.build import find_tool

    return BinaryEngine(find_tool("llama-quantize"))


def is_copy(quant_type: QuantType) -> bool:
    return quant_type.name == COPY
