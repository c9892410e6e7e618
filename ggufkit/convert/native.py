"""The native engine: a registered converter's tensor plans streamed into a GGUF (or split set).

Loaded by ``convert()`` only when a conversion uses it, with gguf and numpy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf

from ggufkit.convert.base import FILE_TYPES, ModelConverter
from ggufkit.convert.chat_templates import ChatTemplateChoice, apply_chat_template
from ggufkit.convert.general_meta import add_upstream_general
from ggufkit.convert.provenance import add_general_metadata, add_provenance
from ggufkit.convert.result import EngineResult
from ggufkit.convert.split import write_split
from ggufkit.convert.writer import write_gguf
from ggufkit.core.errors import AdapterError, TokenizerError
from ggufkit.core.fsutil import atomic_output, check_free_disk
from ggufkit.core.log import progress
from ggufkit.formats.gguf_split import SplitLimits, shards_named_like
from ggufkit.formats.origin import SourceInfo, SourceOrigin
from ggufkit.formats.safetensors import Checkpoint, TensorSource


def open_source(model_dir: Path, delta_base: Path | None, lora: Path | None = None) -> TensorSource:
    """The tensors to convert: the checkpoint itself, or base + delta (or + a LoRA adapter)
    merged on the fly."""
    if lora is not None:
        from ggufkit.delta import open_lora

        return _checked_lora(open_lora(model_dir, lora))
    if delta_base is None:
        return Checkpoint.open(model_dir)
    from ggufkit.delta import open_merged

    source: TensorSource = open_merged(delta_base, model_dir)
    return source


def convert_native(
    converter_cls: type[ModelConverter],
    info: SourceInfo,
    config: dict[str, Any],
    out: Path,
    outtype: str,
    threads: int | None,
    pre_tokenizer: str | None,
    chat: ChatTemplateChoice,
    split: SplitLimits | None = None,
    phases: dict[str, float] | None = None,
) -> EngineResult:
    """Convert with a registered converter; ``phases`` receives the seconds of "data" (tensor
    data converted and written) and "finish" (waiting for the hashes, the final header)."""
    source = open_source(info.model_dir, info.delta_base, info.lora)
    origin: SourceOrigin | None = None
    try:
        converter = converter_cls(info.model_dir, config, source, outtype=outtype)
        converter.pre_tokenizer = pre_tokenizer
        # Everything that can fail on bad input fails here, before the output exists.
        plans = converter.plan_tensors()
        converter.validate(plans)
        writer = gguf.GGUFWriter(path=None, arch=converter.arch_name)
        add_general_metadata(writer, info, config, FILE_TYPES[converter.outtype])
        add_upstream_general(writer, info.model_dir, ((p.name, p.shape) for p in plans))
        converter.set_gguf_parameters(writer)
        try:
            converter.set_vocab(writer)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            # A hostile or broken tokenizer file: entries of the wrong type or missing
            raise TokenizerError(
                f"{info.model_dir}: the tokenizer files have an unexpected shape "
                f"({type(exc).__name__}: {exc})",
                hint="restore the checkpoint's original tokenizer files",
                path=info.model_dir,
            ) from exc
        converter.notes.extend(apply_chat_template(writer, chat))
        data_bytes = sum(plan.n_bytes + gguf.GGUF_DEFAULT_ALIGNMENT for plan in plans)
        check_free_disk(out, data_bytes + 4 * 1024 * 1024)
        origin = SourceOrigin.of(info)
        add_provenance(writer, info, origin, engine="native")
        kv = writer.kv_data[0]

        data_started = time.perf_counter()

        def final_kv() -> dict[str, Any]:
            assert origin is not None
            finish_started = time.perf_counter()
            if phases is not None:
                phases["data"] = finish_started - data_started
            if origin.labels:
                kv["ggufkit.source.sha256"].value = origin.result()
            if phases is not None:
                phases["finish"] = time.perf_counter() - finish_started
            return kv

        source_bytes = sum(plan.source_bytes for plan in plans)
        workers = threads or os.cpu_count() or 1
        with progress(source_bytes, f"converting {info.model_dir.name}") as bar:
            if split is not None:
                stats, files = write_split(
                    out, kv, plans, source, split,
                    threads=workers, on_bytes=bar.update, final_kv=final_kv,
                )  # fmt: skip
                remove_shards(out, keep=files)
            else:
                with atomic_output(out) as partial:
                    stats = write_gguf(
                        partial, kv, plans, source,
                        threads=workers, on_bytes=bar.update, final_kv=final_kv,
                    )  # fmt: skip
        return EngineResult(
            stats.n_tensors, stats.n_bytes, stats.source_bytes, converter.arch_name, converter.notes
        )
    finally:
        if origin is not None:
            origin.cancel()
        source.close()


def _checked_lora(source: Any) -> TensorSource:
    """A fused LoRA converts with the base's tokenizer: an adapter that resizes the vocabulary
    brings its own, which only a merged directory carries."""
    if source.extended:
        source.close()
        raise AdapterError(
            f"the adapter {source.adapter_dir} resizes the vocabulary "
            f"({', '.join(f'{n}: {b} -> {r}' for n, (b, r) in source.extended.items())}): "
            "its tokenizer is not the base's",
            hint="merge with `ggufkit merge-lora` and convert the merged directory",
            path=source.adapter_dir,
        )
    checked: TensorSource = source
    return checked


def remove_shards(out: Path, keep: Sequence[Path] = ()) -> None:
    """Shards an earlier split of the same name left (their count may differ this time)."""
    for stale in shards_named_like(out):
        if stale not in keep:
            stale.unlink()
