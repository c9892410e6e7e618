"""merge-lora: base + a PEFT LoRA adapter written as a Hugging Face directory, in bounded memory.

The writer is merge-delta's (``merge.write_model``): safetensors shards written by row block on
every core, config.json, the tokenizer files (the adapter's when it saved some, else the base's)
and the merge record, which ``ggufkit convert`` reads back so that merging then converting
records the same origin as ``convert BASE --lora ADAPTER``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ggufkit.core.log import get_logger
from ggufkit.delta.lora_source import LoraSource, merged_config
from ggufkit.delta.merge import (
    TOKENIZER_FILES,
    MergeResult,
    check_paths,
    resolve_dir,
    write_merged,
)
from ggufkit.formats.origin import SourceInfo, SourceOrigin
from ggufkit.formats.shards import DEFAULT_MAX_SHARD_BYTES

log = get_logger(__name__)


def open_lora(base_dir: Path, adapter_dir: Path, *, dtype: str | None = None) -> LoraSource:
    """The base with the adapter merged, tensor by tensor; checked against each other up front.

    ``dtype`` (default: the base's own): ``base + scale * B @ A`` is computed in float32 and
    rounded once to it, as PEFT's merge_and_unload() adds its float32 update into the weight;
    "f32" keeps the float32 sum.
    """
    source = LoraSource(Path(base_dir), Path(adapter_dir), dtype=dtype)
    adapter = source.adapter
    log.info(
        "LoRA r=%d alpha=%g%s: %d weights changed%s, merged in %s",
        adapter.rank,
        adapter.alpha,
        " (rsLoRA: alpha/sqrt(r))" if adapter.rslora else "",
        len(source.pairs),
        f", {len(adapter.saved)} replaced" if adapter.saved else "",
        source.dtype,
    )
    return source


def merge_lora(
    base: str | Path,
    adapter: str | Path,
    output: str | Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> MergeResult:
    """Write base + the adapter to ``output`` (a directory); see :func:`open_lora`."""
    started = time.perf_counter()
    base_dir, adapter_dir = resolve_dir(base), Path(adapter)
    output = Path(output)
    check_paths(output, {"--base": base_dir, "--adapter": adapter_dir})
    with open_lora(base_dir, adapter_dir, dtype=dtype) as source:
        origin = SourceOrigin.of(SourceInfo(model_dir=base_dir, lora=adapter_dir))
        has_tokenizer = any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
        return write_merged(
            source,
            output,
            origin,
            style="lora",
            files_from=adapter_dir if has_tokenizer else base_dir,
            fallback=base_dir,
            max_shard_bytes=max_shard_bytes,
            started=started,
            config=merged_config(source),
        )
