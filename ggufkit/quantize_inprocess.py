"""The in-process engine: ``llama_cpp.llama_model_quantize`` on our built libllama.

Used when no ``llama-quantize`` binary is built but the bindings import. It fills
``llama_model_quantize_params`` exactly as ``tools/quantize/quantize.cpp`` does — the importance
matrix loaded and normalised the same way, the same metadata overrides in the same order — so the
output is byte-identical to the binary's. llama.cpp's log is captured through ``llama_log_set``
for progress, the error tail and a log file.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.errors import InputError, ToolFailedError, UsageError
from ggufkit.llamacpp.bindings import load_llama_cpp
from ggufkit.quantize_engines import (
    DryRun,
    Engine,
    LogWatcher,
    ProgressCallback,
    QuantizeOptions,
    RunReport,
    explain_failure,
    parse_dry_run,
)
from ggufkit.quantize_types import COPY, QuantType, TypeTable, table_from_bindings

# Metadata keys quantize.cpp records about the importance matrix.
KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
TAIL_LINES = 15


@dataclass
class ImatrixData:
    """Per-tensor importance weights, normalised as quantize.cpp's ``load_imatrix`` does."""

    entries: dict[str, Any]  # name -> float32 numpy array
    datasets: list[str]
    chunk_count: int


def _imatrix_error(path: Path, problem: str) -> InputError:
    return InputError(
        f"{path} is not an importance matrix llama.cpp can read: {problem}",
        hint="make one with `ggufkit imatrix MODEL.gguf --corpus TEXT`",
        path=path,
    )


def load_imatrix(path: Path) -> ImatrixData:
    """Read a GGUF imatrix (``<name>.in_sum2`` / ``<name>.counts``) or the legacy .dat format."""
    import numpy as np

    try:
        with open(path, "rb") as handle:
            is_gguf = handle.read(4) == b"GGUF"
    except OSError as exc:
        raise _imatrix_error(path, exc.strerror or str(exc)) from exc
    if not is_gguf:
        return _load_legacy_imatrix(path)
    from ggufkit.errors import GGUFFormatError
    from ggufkit.ggufinfo import read_gguf

    try:
        info = read_gguf(path)
    except GGUFFormatError as exc:
        raise _imatrix_error(path, str(exc)) from exc
    meta = info.metadata
    if not all(
        k in meta for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
    ):
        raise _imatrix_error(path, "missing imatrix metadata")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    pairs: dict[str, dict[str, Any]] = {}
    for tensor in info.tensors:
        for suffix in (".in_sum2", ".counts"):
            if tensor.name.endswith(suffix):
                if tensor.type_name != "F32":
                    raise _imatrix_error(path, f"{tensor.name} is {tensor.type_name}, not F32")
                data = raw[tensor.file_offset : tensor.file_offset + (tensor.n_bytes or 0)]
                pairs.setdefault(tensor.name.removesuffix(suffix), {})[suffix] = data.view("<f4")
    entries = {}
    for name, pair in pairs.items():
        if len(pair) != 2:
            raise _imatrix_error(path, f"mismatched sums and counts for {name}")
        sums = pair[".in_sum2"].astype(np.float32)
        # std::lround (half away from zero) of non-negative counts, then (float)count.
        counts = np.floor(pair[".counts"].astype(np.float64) + 0.5).astype(np.int64)
        if counts.size == 0 or sums.size % counts.size:
            raise _imatrix_error(path, f"{name} has {sums.size} sums for {counts.size} counts")
        per = sums.reshape(counts.size, -1)
        divisor = counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = np.where(divisor > 0, per / np.where(divisor > 0, divisor, 1), 1)
        entries[name] = np.ascontiguousarray(normalised.astype(np.float32).reshape(-1))
    datasets = meta["imatrix.datasets"]
    chunk_count = meta["imatrix.chunk_count"]
    return ImatrixData(
        entries,
        [str(d) for d in datasets] if isinstance(datasets, list) else [],
        int(chunk_count) if isinstance(chunk_count, int) else 0,
    )


def _load_legacy_imatrix(path: Path) -> ImatrixData:
    import numpy as np

    blob = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(blob):
            raise _imatrix_error(path, f"truncated at byte {pos}")
        values = struct.unpack_from(fmt, blob, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > len(blob) // 12:
        raise _imatrix_error(path, "no data (not a GGUF file either)")
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 0 or pos + length > len(blob):
            raise _imatrix_error(path, f"bad name length at byte {pos}")
        name = blob[pos : pos + length].split(b"\0")[0].decode("utf-8", "replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(blob):
            raise _imatrix_error(path, f"bad value count for {name}")
        sums = np.frombuffer(blob, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = sums / np.float32(ncall) if ncall > 0 else sums.copy()
    chunk_count, datasets = 0, []
    if pos + 4 <= len(blob):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(blob):
            (length,) = take("<i")
            if length > 0 and pos + length <= len(blob):
                datasets.append(blob[pos : pos + length].split(b"\0")[0].decode("utf-8", "replace"))
    return ImatrixData(entries, datasets, chunk_count)


class InProcessEngine(Engine):
    name = "inprocess"

    def __init__(self) -> None:
        self.llama = load_llama_cpp()
        self.llama.llama_backend_init()

    def table(self) -> TypeTable:
        return table_from_bindings(self.llama)

    def _ggml_type(self, name: str, flag: str) -> int:
        value = getattr(self.llama, f"GGML_TYPE_{name.upper()}", None)
        if not isinstance(value, int) or name.upper() == "COUNT":
            raise UsageError(
                f"{flag} {name!r} is not a ggml tensor type",
                hint="use a ggml type name such as q8_0, q6_k, q4_k or f16",
            )
        return value

    def _params(
        self, quant_type: QuantType, options: QuantizeOptions, dry_run: bool
    ) -> tuple[Any, list[Any]]:
        """The params struct and the buffers it points into (kept alive by the caller)."""
        lib = self.llama
        params = lib.llama_model_quantize_default_params()
        keep: list[Any] = []
        if quant_type.name == COPY:
            params.only_copy = True
            params.ftype = int(lib.LLAMA_FTYPE_ALL_F32)
        else:
            assert quant_type.ftype is not None
            params.ftype = quant_type.ftype
        params.nthread = options.threads or 0
        params.allow_requantize = options.allow_requantize
        params.quantize_output_tensor = not options.leave_output_tensor
        params.pure = options.pure
        params.dry_run = dry_run
        if options.output_tensor_type:
            params.output_tensor_type = self._ggml_type(
                options.output_tensor_type, "--output-tensor-type"
            )
        if options.token_embedding_type:
            params.token_embedding_type = self._ggml_type(
                options.token_embedding_type, "--token-embedding-type"
            )
        overrides: list[tuple[str, int, Any]] = [
            (kv.key, getattr(lib, f"LLAMA_KV_OVERRIDE_TYPE_{kv.kind.upper()}"), kv.value)
            for kv in options.override_kv
        ]
        if options.imatrix is not None:
            data = load_imatrix(options.imatrix)
            if data.entries:
                array = (lib.llama_model_imatrix_data * (len(data.entries) + 1))()
                for slot, (name, values) in zip(array, data.entries.items(), strict=False):
                    encoded = name.encode()
                    keep += [encoded, values]
                    slot.name = encoded
                    slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                    slot.size = values.size
                keep.append(array)
                params.imatrix = array
                # The same metadata, in the same order, as quantize.cpp.
                overrides.append(
                    (KV_IMATRIX_FILE, lib.LLAMA_KV_OVERRIDE_TYPE_STR, str(options.imatrix))
                )
                if data.datasets:
                    overrides.append(
                        (KV_IMATRIX_DATASET, lib.LLAMA_KV_OVERRIDE_TYPE_STR, data.datasets[0])
                    )
                overrides.append(
                    (KV_IMATRIX_ENTRIES, lib.LLAMA_KV_OVERRIDE_TYPE_INT, len(data.entries))
                )
                if data.chunk_count > 0:
                    overrides.append(
                        (KV_IMATRIX_CHUNKS, lib.LLAMA_KV_OVERRIDE_TYPE_INT, data.chunk_count)
                    )
        if overrides:
            kv_array = (lib.llama_model_kv_override * (len(overrides) + 1))()
            for slot, (key, tag, value) in zip(kv_array, overrides, strict=False):
                slot.key = key.encode()[:127]
                slot.tag = tag
                if tag == lib.LLAMA_KV_OVERRIDE_TYPE_STR:
                    slot.value.val_str = str(value).encode()[:127]
                elif tag == lib.LLAMA_KV_OVERRIDE_TYPE_INT:
                    slot.value.val_i64 = int(value)
                elif tag == lib.LLAMA_KV_OVERRIDE_TYPE_FLOAT:
                    slot.value.val_f64 = float(value)
                else:
                    slot.value.val_bool = bool(value)
            keep.append(kv_array)
            params.kv_overrides = kv_array
        return params, keep

    @contextmanager
    def _captured_log(
        self, name: str, on_line: LogWatcher | None = None
    ) -> Iterator[tuple[list[str], Path]]:
        """Route llama.cpp's log into a list, a log file and ``on_line``; restore it afterwards."""
        from ggufkit.llamacpp.runner import new_log_path

        lines: list[str] = []
        partial: list[str] = []
        log_path = new_log_path(name)
        with open(log_path, "w", encoding="utf-8", errors="replace") as handle:

            @self.llama.llama_log_callback
            def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                chunk = text.decode("utf-8", errors="replace")
                handle.write(chunk)
                partial.append(chunk)
                if "\n" in chunk:
                    *complete, rest = "".join(partial).split("\n")
                    partial[:] = [rest] if rest else []
                    for line in complete:
                        lines.append(line)
                        if on_line is not None:
                            on_line(line)

            self.llama.llama_log_set(callback, ctypes.c_void_p(0))
            try:
                yield lines, log_path
            finally:
                # Hand the log back to llama_cpp's own handler (or llama.cpp's default, stderr).
                previous = getattr(sys.modules.get("llama_cpp._logger"), "llama_log_callback", None)
                self.llama.llama_log_set(previous, ctypes.c_void_p(0))
                lines.extend("".join(partial).splitlines())

    def _quantize(
        self,
        source: Path,
        output: Path | None,
        quant_type: QuantType,
        options: QuantizeOptions,
        on_line: LogWatcher | None,
    ) -> tuple[list[str], Path]:
        params, keep = self._params(quant_type, options, dry_run=output is None)
        with self._captured_log("inprocess-quantize", on_line) as (lines, log_path):
            status = self.llama.llama_model_quantize(
                str(source).encode(), str(output or "").encode(), ctypes.byref(params)
            )
        del keep
        if status != 0:
            error = ToolFailedError(
                f"in-process quantization to {quant_type.name} failed (status {status})",
                log_path=log_path,
                tail="\n".join(deque(lines, maxlen=TAIL_LINES)),
            )
            raise explain_failure(error, options) from None
        return lines, log_path

    def dry_run(self, source: Path, quant_type: QuantType, options: QuantizeOptions) -> DryRun:
        lines, _ = self._quantize(source, None, quant_type, options, None)
        return parse_dry_run("\n".join(lines))

    def run(
        self,
        source: Path,
        output: Path,
        quant_type: QuantType,
        options: QuantizeOptions,
        on_progress: ProgressCallback | None = None,
    ) -> RunReport:
        watcher = LogWatcher(on_progress)
        started = time.perf_counter()
        _, log_path = self._quantize(source, output, quant_type, options, watcher)
        return RunReport(log_path, watcher.bits_per_weight, time.perf_counter() - started)
