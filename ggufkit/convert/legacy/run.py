"""A legacy file converted: ``convert()`` hands a file whose magic is a legacy one to
:func:`convert_legacy`.

The file is parsed and checked completely (``reader``) and every decision is made before the
output exists: names (``tensors``), the tokenizer (``vocab``), hparams. Then the header is written
and the tensors stream after it one chunk at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ggufkit import __version__
from ggufkit.convert.base import TensorPlan
from ggufkit.convert.legacy.reader import LegacyFile, LegacyTensor, read_legacy
from ggufkit.convert.legacy.tensors import (
    NAME_TABLES,
    TensorJob,
    describe_actions,
    gguf_name,
    plan_tensor,
)
from ggufkit.convert.legacy.vocab import require_tokenizer, resolve_tokenizer, set_legacy_vocab
from ggufkit.convert.result import EXISTS_HINT
from ggufkit.convert.writer import serialize_header
from ggufkit.core.errors import ConversionError, LegacyFormatError, UsageError
from ggufkit.core.fsutil import atomic_output, check_free_disk, check_output_path, sha256_file
from ggufkit.core.log import get_logger, progress
from ggufkit.formats.hfconfig import MAX_COUNT, load_config

log = get_logger(__name__)

# Training context of the families whose legacy files exist; a legacy file records none.
DEFAULT_CONTEXT = {"llama": 2048, "bloom": 2048}
# llama.cpp of 2023 fixed LLaMA's RMS norm epsilon at 1e-6 (LLaMA 2 needs 1e-5: its config.json
# says so, and a tokenizer directory given with the checkpoint's config reads it); BLOOM's is 1e-5.
DEFAULT_EPS = {"llama": 1e-6, "bloom": 1e-5}


@dataclass
class LegacyResult:
    """What :func:`convert_legacy` did (``convert`` wraps it into a ConvertResult)."""

    output: Path
    source_format: str
    gguf_arch: str
    outtype: str
    n_tensors: int
    n_bytes: int
    source_bytes: int
    notes: list[str]


def convert_legacy(
    path: str | Path,
    output: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    context_length: int | None = None,
    pre_tokenizer: str | None = None,
    force: bool = False,
) -> LegacyResult:
    """Convert a legacy GGML/GGMF/GGJT (or bloomz.cpp) file to GGUF; see the module doc."""
    started = time.perf_counter()
    path = Path(path)
    if context_length is not None and not 0 < context_length <= MAX_COUNT:
        raise UsageError(
            f"`context_length` must be between 1 and {MAX_COUNT}, got {context_length}",
            hint="give the model's trained context length",
        )
    legacy = read_legacy(path)
    out = Path(output) if output is not None else path.with_suffix(".gguf")
    check_output_path(out, inputs=(path,))
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint=EXISTS_HINT)
    tokenizer_dir = resolve_tokenizer(tokenizer) if tokenizer is not None else None
    require_tokenizer(legacy, tokenizer_dir)  # before the tensors are scanned
    config = _read_config(tokenizer_dir)
    notes: list[str] = [f"source: {legacy.label} file, {legacy.ftype_name}"]

    jobs = _plan(legacy, notes)
    arch = gguf.MODEL_ARCH.LLAMA if legacy.family == "llama" else gguf.MODEL_ARCH.BLOOM
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(path.stem)
    writer.add_description(f"converted from legacy {legacy.label} {legacy.ftype_name} format")
    writer.add_file_type(_file_type(legacy, jobs))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _set_parameters(writer, legacy, jobs, config, context_length, notes)
    notes.extend(set_legacy_vocab(writer, legacy, tokenizer_dir, pre_tokenizer))
    writer.add_string("ggufkit.version", __version__)
    writer.add_string("ggufkit.engine", "legacy")
    writer.add_string("ggufkit.source.format", legacy.label)
    writer.add_array("ggufkit.source.files", [path.name])
    writer.add_array("ggufkit.source.sha256", [sha256_file(path)])
    notes.extend(describe_actions(jobs))

    plans = [
        TensorPlan(j.name, j.shape, j.ggml_type, lambda: np.zeros(0), j.source.n_bytes)
        for j in jobs
    ]
    header, offsets = serialize_header(writer.kv_data[0], plans)
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    total = offsets[-1] + -(-plans[-1].n_bytes // align) * align
    check_free_disk(out, total + 4 * 1024 * 1024)
    source_bytes = sum(j.source.n_bytes for j in jobs)
    with (
        atomic_output(out) as partial,
        open(partial, "wb") as fh,
        progress(source_bytes, f"converting {path.name}") as bar,
    ):
        fh.write(header)
        for job, plan, offset in zip(jobs, plans, offsets, strict=True):
            fh.write(b"\0" * (offset - fh.tell()))
            written = 0
            for chunk in job.chunks():
                data = np.ascontiguousarray(chunk).view(np.uint8)
                fh.write(data.data)
                written += data.nbytes
            if written != plan.n_bytes:
                raise ConversionError(
                    f"internal error: {job.name} wrote {written} bytes, planned {plan.n_bytes}"
                )
            bar.update(job.source.n_bytes)
        fh.write(b"\0" * (total - fh.tell()))
    log.debug("wrote %s in %.1f s", out, time.perf_counter() - started)
    return LegacyResult(
        output=out,
        source_format=f"{legacy.label} ({legacy.family})",
        gguf_arch=gguf.MODEL_ARCH_NAMES[arch],
        outtype=_outtype(jobs),
        n_tensors=len(jobs),
        n_bytes=out.stat().st_size,
        source_bytes=path.stat().st_size,
        notes=notes,
    )


def _plan(legacy: LegacyFile, notes: list[str]) -> list[TensorJob]:
    jobs = []
    embedding = legacy.tensor("tok_embeddings.weight")
    for tensor in legacy.tensors:
        name = gguf_name(legacy.family, tensor.name)
        if name is None:
            raise LegacyFormatError(
                f"{legacy.path}: tensor {tensor.name!r} is not part of a {legacy.family} model",
                hint="the file is corrupt, or from a fork of llama.cpp/bloomz.cpp not supported",
                path=legacy.path,
            )
        if (
            name == "output.weight"
            and legacy.family == "bloom"
            and embedding is not None
            and _same_bytes(legacy, tensor, embedding)
        ):
            notes.append(
                "output.weight is a copy of the tied embedding: left out (llama.cpp uses token_embd)"
            )
            continue
        jobs.append(plan_tensor(legacy, tensor, name))
    _check_complete(legacy, jobs)
    return jobs


def _check_complete(legacy: LegacyFile, jobs: list[TensorJob]) -> None:
    """Every tensor the family needs is there once, with the shape the hparams imply."""
    hp = legacy.hparams
    e, n_layer = hp["n_embd"], hp["n_layer"]
    names = [j.name for j in jobs]
    dupes = {n for n in names if names.count(n) > 1}
    per_layer = {n.replace("{i}", "0") for n in NAME_TABLES[legacy.family].values() if "{i}" in n}
    wanted = {"token_embd.weight"} | {
        n.replace("blk.0.", f"blk.{i}.") for n in per_layer for i in range(n_layer)
    }
    missing = sorted(wanted - set(names))
    shapes = {j.name: j.shape for j in jobs}
    qkv = "blk.0.attn_qkv.weight" if legacy.family == "bloom" else "blk.0.attn_q.weight"
    want_qkv = (3 * e, e) if legacy.family == "bloom" else (e, e)
    if dupes or missing or shapes.get(qkv, want_qkv) != want_qkv:
        what = (
            f"repeats {sorted(dupes)[0]}"
            if dupes
            else f"lacks {', '.join(missing[:3])}"
            if missing
            else f"has {qkv} of shape {list(shapes[qkv])}, not {list(want_qkv)}"
        )
        raise LegacyFormatError(
            f"{legacy.path} {what} (n_layer {n_layer}, n_embd {e})",
            hint="the file is incomplete or corrupt",
            path=legacy.path,
        )


def _same_bytes(legacy: LegacyFile, a: LegacyTensor, b: LegacyTensor) -> bool:
    if (a.type_id, a.dims) != (b.type_id, b.dims):
        return False
    step = 16 << 20
    pairs = zip(legacy.chunks(a, step), legacy.chunks(b, step), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def _read_config(tokenizer_dir: Path | None) -> dict[str, Any]:
    if tokenizer_dir is None or not (tokenizer_dir / "config.json").exists():
        return {}
    return load_config(tokenizer_dir)  # its numbers checked, like a checkpoint's


def _context(
    legacy: LegacyFile, config: dict[str, Any], given: int | None, notes: list[str]
) -> int:
    if given is not None:
        return given
    for key in ("max_position_embeddings", "seq_length", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            notes.append(f"context length {value} from the tokenizer directory's config.json")
            return value
    default = DEFAULT_CONTEXT[legacy.family]
    notes.append(
        f"context length: the legacy file records none; using the family's {default} "
        "(set it with `context_length`)"
    )
    return default


def _set_parameters(
    writer: gguf.GGUFWriter,
    legacy: LegacyFile,
    jobs: list[TensorJob],
    config: dict[str, Any],
    context_length: int | None,
    notes: list[str],
) -> None:
    hp = legacy.hparams
    by_name = {j.name: j for j in jobs}
    n_embd, n_head = hp["n_embd"], hp["n_head"]
    if n_embd % n_head:
        raise LegacyFormatError(
            f"{legacy.path}: n_embd {n_embd} is not a multiple of {n_head} heads"
        )
    token_embd = by_name["token_embd.weight"].shape
    if token_embd != (hp["n_vocab"], n_embd):
        raise LegacyFormatError(
            f"{legacy.path}: the embedding is {list(token_embd)}, the hparams say "
            f"[{hp['n_vocab']}, {n_embd}]",
            hint="the file is corrupt",
            path=legacy.path,
        )
    writer.add_context_length(_context(legacy, config, context_length, notes))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(hp["n_layer"])
    writer.add_head_count(n_head)
    if legacy.family == "llama":
        writer.add_feed_forward_length(by_name["blk.0.ffn_gate.weight"].shape[0])
        writer.add_rope_dimension_count(n_embd // n_head)
        kv_rows = by_name["blk.0.attn_k.weight"].shape[0]
        writer.add_head_count_kv(kv_rows // (n_embd // n_head))  # GQA shows in wk's rows
        eps = config.get("rms_norm_eps")
        key = "rms_norm_eps"
    else:
        writer.add_feed_forward_length(by_name["blk.0.ffn_up.weight"].shape[0])
        writer.add_head_count_kv(n_head)
        eps = config.get("layer_norm_epsilon")
        key = "layer_norm_epsilon"
    if not isinstance(eps, float):
        eps = DEFAULT_EPS[legacy.family]
        notes.append(f"norm epsilon {eps:g} ({legacy.family}'s; no config.json {key} given)")
    if legacy.family == "llama":
        writer.add_layer_norm_rms_eps(eps)
    else:
        writer.add_layer_norm_eps(eps)


def _file_type(legacy: LegacyFile, jobs: list[TensorJob]) -> int:
    if any(j.action == "dequantized" for j in jobs):
        return int(gguf.LlamaFileType.MOSTLY_F16)
    return legacy.hparams["ftype"]  # legacy ftype numbers are llama.cpp's file types


def _outtype(jobs: list[TensorJob]) -> str:
    types = sorted({j.ggml_type.name.lower() for j in jobs if len(j.shape) > 1})
    return "+".join(types) or "f32"
