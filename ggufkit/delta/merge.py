"""merge-delta and make-delta: a whole checkpoint written from a CombinedSource, one tensor at a time.

The output is a Hugging Face directory: safetensors shards (an index when there is more than one),
config.json and the tokenizer files of the delta (merge) or of the target (make), as FastChat and
LLMZoo save them. Everything is checked before the first byte is written, and the directory is
built under a temporary name that is renamed only once it is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ggufkit.core.errors import UsageError, disk_full
from ggufkit.core.fsutil import atomic_dir, check_free_disk, human_bytes, path_key, same_file
from ggufkit.core.log import get_logger, progress
from ggufkit.delta.arith import DTYPES, TORCH_NAMES, Dtype, RoundTrip
from ggufkit.delta.source import STYLES, CombinedSource, Style
from ggufkit.formats.hfconfig import load_config
from ggufkit.formats.kernels import scratch
from ggufkit.formats.origin import SourceInfo, SourceOrigin, write_merge_record
from ggufkit.formats.safetensors import TensorInfo
from ggufkit.formats.shards import (
    DEFAULT_MAX_SHARD_BYTES,
    RowProducer,
    ShardedCheckpoint,
    TensorSpec,
    write_sharded,
)

log = get_logger(__name__)

# What both tools save next to the weights, taken from the delta (merge) or the target (make).
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
EXTRA_FILES = ("generation_config.json",)
DEFAULT_DTYPE: Dtype = "f16"  # FastChat and LLMZoo both load as fp16 and add in fp16


@dataclass(frozen=True)
class MergeResult:
    output: Path
    style: str  # the style used: "llmzoo" or "fastchat" ("auto" resolved)
    dtype: str
    tensors: int
    extended: dict[str, tuple[int, int]]  # tensors whose vocabulary grew: (base rows, new rows)
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "style": self.style,
            "dtype": self.dtype,
            "tensors": self.tensors,
            "extended": {name: list(rows) for name, rows in self.extended.items()},
            "files": [str(f) for f in self.files],
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 3),
        }


def resolve_dir(ref: str | Path) -> Path:
    """A local model directory, or a Hub id (owner/name) downloaded into the cache."""
    from ggufkit.hub import resolve_model

    return Path(resolve_model(ref).path)


def _check_dtype(dtype: str | None) -> Dtype:
    if dtype is None:
        return DEFAULT_DTYPE
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="use one of: " + ", ".join(DTYPES))
    return dtype


def open_merged(
    base_dir: Path, delta_dir: Path, *, style: str = "auto", dtype: str | None = None
) -> CombinedSource:
    """The merged model, tensor by tensor: base + delta computed on read, validated up front.

    ``style``: "fastchat" (same shapes only, like FastChat's apply_delta), "llmzoo" (rows the
    delta appends to the vocabulary get a zero base) or "auto" (llmzoo when the delta has more
    vocabulary rows, else fastchat). ``dtype`` (default f16, as both tools): inputs are rounded
    to it, added, and the sum is returned in it; "f32" adds exactly.
    """
    if style not in STYLES:
        raise UsageError(f"unknown style {style!r}", hint="use one of: " + ", ".join(STYLES))
    working = _check_dtype(dtype)
    source = CombinedSource(
        Path(base_dir),
        Path(delta_dir),
        dtype=working,
        subtract=False,
        allow_extra_rows=style != "fastchat",
        what="delta",
    )
    chosen: Style = "llmzoo" if style == "llmzoo" or source.extended else "fastchat"
    source.style = chosen
    if source.extended:
        base_rows, rows = next(iter(source.extended.values()))
        why = f"the delta adds {rows - base_rows} vocabulary row(s), {base_rows} -> {rows}"
        log.info("style %s%s: %s, given a zero base", chosen, _auto(style), why)
    else:
        log.info("style %s%s: same shapes on both sides", chosen, _auto(style))
    log.info(
        "adding in %s%s",
        working,
        " (FastChat's and LLMZoo's fp16; for an exact sum, `merge-delta --dtype f32` first)"
        if dtype is None
        else "",
    )
    return source


def _auto(style: str) -> str:
    return " (chosen by auto)" if style == "auto" else ""


def merge_delta(
    base: str | Path,
    delta: str | Path,
    output: str | Path,
    *,
    style: str = "auto",
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> MergeResult:
    """Write base + delta to ``output`` (a directory) in bounded memory; see :func:`open_merged`."""
    started = time.perf_counter()
    base_dir, delta_dir = resolve_dir(base), resolve_dir(delta)
    output = Path(output)
    check_paths(output, {"--base": base_dir, "--delta": delta_dir})
    # Hashed while merging; converting the output records base and delta, as the fused
    # `convert --delta-base` does.
    origin = SourceOrigin.of(SourceInfo(model_dir=delta_dir, delta_base=base_dir))
    with open_merged(base_dir, delta_dir, style=style, dtype=dtype) as source:
        return write_merged(
            source,
            output,
            origin,
            style=source.style or "fastchat",
            files_from=delta_dir,
            fallback=base_dir,
            max_shard_bytes=max_shard_bytes,
            started=started,
        )


def write_merged(
    source: MergedSource,
    output: Path,
    origin: SourceOrigin,
    *,
    style: str,
    files_from: Path,
    fallback: Path,
    max_shard_bytes: int,
    started: float,
    config: dict[str, Any] | None = None,
) -> MergeResult:
    """:func:`write_model` for a merge (``origin`` hashed while writing, its hashing ended either
    way), and what was written."""
    try:
        written = write_model(
            source,
            output,
            files_from=files_from,
            fallback=fallback,
            what="merged model",
            max_shard_bytes=max_shard_bytes,
            origin=origin,
            config=config,
        )
    finally:
        origin.cancel()
    result = MergeResult(
        output=output,
        style=style,
        dtype=source.dtype,
        tensors=len(source.infos()),
        extended=dict(source.extended),
        files=[output / f.name for f in written.files],
        total_bytes=written.total_bytes,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "merged %d tensors into %s (%s)", result.tensors, output, human_bytes(result.total_bytes)
    )
    return result


def make_delta(
    base: str | Path,
    target: str | Path,
    output: str | Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write target - base to ``output``: the inverse of :func:`merge_delta`.

    Rows the target appends to the vocabulary are stored as they are (a zero base), which
    merge-delta's llmzoo style undoes. ``dtype`` as for merge (default f16, like FastChat's
    make_delta); with "f32" the merge gives the target back bit for bit wherever float32 holds
    target - base exactly (for fp16 models, every difference below 1); a warning counts the
    values where it cannot.
    """
    working = _check_dtype(dtype)
    base_dir, target_dir = resolve_dir(base), resolve_dir(target)
    output = Path(output)
    if same_file(base_dir, target_dir):  # as check_output_path compares: links, case folding
        raise UsageError(
            f"--base and --target are the same directory ({base_dir}): the delta would be zeros",
            hint="give the fine-tuned model as --target",
        )
    check_paths(output, {"--base": base_dir, "--target": target_dir})
    with CombinedSource(
        base_dir, target_dir, dtype=working, subtract=True, allow_extra_rows=True, what="target"
    ) as source:
        write_model(
            source,
            output,
            files_from=target_dir,
            fallback=base_dir,
            what="delta",
            max_shard_bytes=max_shard_bytes,
        )
        stats = source.round_trip
    if stats is not None and stats.inexact:
        log.warning(
            "%d values (in %s) cannot come back exactly from base + delta in float32: "
            "base and target differ too much in magnitude there; largest error %.3g",
            stats.inexact,
            ", ".join(stats.tensors[:4]),
            stats.max_error,
        )
    log.info("wrote the delta to %s", output)
    return output


def check_paths(output: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output that is, holds or lies in an input, or that is someone else's directory."""
    target = path_key(output.resolve())  # case folded, as fsutil.check_output_path compares
    for option, path in inputs.items():
        source = path_key(path.resolve())
        if (
            target == source
            or target.startswith(source + os.sep)
            or source.startswith(target + os.sep)
        ):
            raise UsageError(
                f"the output {output} would overwrite {option} {path}",
                hint="write the result to a new directory with -o",
            )
    if output.exists() and not output.is_dir():
        raise UsageError(f"the output {output} is a file", hint="give a directory with -o")
    if output.is_dir() and any(output.iterdir()) and not (output / "config.json").exists():
        raise UsageError(
            f"the output {output} is a non-empty directory that does not hold a model",
            hint="give a new directory with -o (an earlier model output would be replaced)",
        )


class MergedSource(Protocol):
    """What the writer needs of a merged model: CombinedSource, lora_source.LoraSource."""

    dtype: Dtype
    round_trip: RoundTrip | None

    @property
    def extended(self) -> dict[str, tuple[int, int]]: ...
    @property
    def total_bytes(self) -> int: ...
    def infos(self) -> list[TensorInfo]: ...
    def read(self, name: str, *, float32: bool = False) -> np.ndarray: ...
    def read_rows(
        self, name: str, rows: slice | np.ndarray, buffer: np.ndarray | None = None
    ) -> np.ndarray: ...
    def release(self, name: str) -> None: ...


def write_model(
    source: MergedSource,
    output: Path,
    *,
    files_from: Path,
    fallback: Path,
    what: str,
    max_shard_bytes: int,
    origin: SourceOrigin | None = None,
    config: dict[str, Any] | None = None,
) -> ShardedCheckpoint:
    """Write a merged model as a Hugging Face directory: shards, config.json (``config``, else
    ``files_from``'s), tokenizer files (``files_from``'s, else ``fallback``'s), the merge record."""
    specs = [TensorSpec(i.name, i.dtype, i.shape) for i in source.infos()]
    check_free_disk(output, source.total_bytes + 1024 * 1024, what=f"the {what} {output}")
    try:
        return _write_files(source, output, specs, files_from, fallback, what, max_shard_bytes, origin, config)  # fmt: skip
    except OSError as exc:
        if (full := disk_full(exc, f"the {what} {output}", output)) is not None:
            raise full from exc
        raise


def _write_files(
    source: MergedSource,
    output: Path,
    specs: list[TensorSpec],
    files_from: Path,
    fallback: Path,
    what: str,
    max_shard_bytes: int,
    origin: SourceOrigin | None,
    config: dict[str, Any] | None,
) -> ShardedCheckpoint:
    with atomic_dir(output) as tmp, progress(source.total_bytes, f"writing the {what}") as bar:

        def done(spec: TensorSpec) -> None:
            source.release(spec.name)
            bar.update(spec.n_bytes)

        # Row blocks on every core; make-delta's round-trip count needs tensors in order.
        parallel = source.round_trip is None
        written = write_sharded(
            tmp,
            specs,
            lambda spec: source.read(spec.name),
            after_tensor=done,
            max_shard_bytes=max_shard_bytes,
            produce_rows=_rows_of(source) if parallel else None,
            threads=os.cpu_count() or 1,
        )
        config = dict(config) if config is not None else load_config(files_from)
        _set_dtype(config, TORCH_NAMES[source.dtype])
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _copy_side_files(files_from, fallback, tmp)
        if origin is not None:
            write_merge_record(tmp, origin, written.files)
    return written


def _rows_of(source: MergedSource) -> RowProducer:
    def rows(spec: TensorSpec, start: int, stop: int) -> np.ndarray:
        # into this thread's buffer: the block is written before the thread makes the next
        buffer = scratch(
            "merge", (stop - start) * spec.n_bytes // max(1, spec.shape[0] if spec.shape else 1)
        )
        return source.read_rows(spec.name, slice(start, stop), buffer=buffer)

    return rows


def _set_dtype(config: dict[str, Any], name: str) -> None:
    """Record the weights' new dtype under the key(s) the config already uses."""
    keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    for key in keys:
        config[key] = name


def _copy_side_files(primary: Path, fallback: Path, out: Path) -> None:
    tokenizer = [name for name in TOKENIZER_FILES if (primary / name).is_file()]
    if not tokenizer:
        log.warning("%s has no tokenizer files: copying those of %s", primary, fallback)
        tokenizer = [name for name in TOKENIZER_FILES if (fallback / name).is_file()]
        for name in tokenizer:
            shutil.copyfile(fallback / name, out / name)
    else:
        for name in tokenizer:
            shutil.copyfile(primary / name, out / name)
    for name in EXTRA_FILES:
        for side in (primary, fallback):
            if (side / name).is_file():
                shutil.copyfile(side / name, out / name)
                break
