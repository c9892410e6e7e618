"""``convert()``: which engine converts a model, and the checks made before any is chosen.

A checkpoint goes to a registered native converter (``native``), to the pinned upstream
converter (``upstream``), or, as a pre-GGUF ``.bin`` file, to ``ggufkit.convert.legacy``.
Outputs are written under a temporary name beside ``OUT`` (``atomic_output``) and renamed only
when complete. The engines load only when a conversion uses them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.convert.chat_templates import AUTO, choose_chat_template, report
from ggufkit.convert.result import (
    ENGINES,
    EXISTS_HINT,
    OUTTYPE_NAMES,
    ConvertResult,
    EngineResult,
    EngineUsed,
    default_output_name,
)
from ggufkit.core.errors import NativeUnsupportedError, UsageError
from ggufkit.core.fsutil import check_output_path
from ggufkit.core.log import get_logger
from ggufkit.formats.gguf_split import SplitLimits, shards_named_like
from ggufkit.formats.hfconfig import architecture, load_config

if TYPE_CHECKING:
    from ggufkit.convert.base import ModelConverter

log = get_logger("convert")


def _resolve(model: str | Path) -> tuple[Path, str | None, str | None]:
    """A local directory as is, or a Hub id downloaded (or found in the cache)."""
    from ggufkit.hub import resolve_model

    resolved = resolve_model(model)
    return Path(resolved.path), resolved.repo_id, resolved.commit or resolved.revision


def convert(
    model: str | Path,
    output: str | Path | None = None,
    *,
    outtype: str = "f16",
    engine: str = "auto",
    delta_base: str | Path | None = None,
    lora: str | Path | None = None,
    threads: int | None = None,
    force: bool = False,
    pre_tokenizer: str | None = None,
    chat_template: str = AUTO,
    tokenizer: str | Path | None = None,
    context_length: int | None = None,
    split: SplitLimits | None = None,
    mmproj_outtype: str = "f16",
) -> ConvertResult:
    """Convert a checkpoint directory or Hub id to a GGUF file; returns what was written.

    ``delta_base``: ``model`` is a delta (config and tokenizer from it) added to this base on the
    fly. ``lora``: a PEFT LoRA adapter directory merged into ``model`` on the fly (``ggufkit.delta.
    open_lora``). ``force`` overwrites an existing output. ``pre_tokenizer`` names llama.cpp's BPE
    pre-tokenizer (``tokenizer.ggml.pre``) instead of detecting it. ``chat_template`` is a
    FastChat template name, a Jinja file, or ``auto`` (the checkpoint's own, else one recognised
    from the model's name, else none; see ``ggufkit.convert.chat_templates``). A legacy
    GGML/GGMF/GGJT or bloomz.cpp ``.bin`` file is converted by ``ggufkit.convert.legacy``, taking
    ``tokenizer`` (the original checkpoint's directory or Hub id) and ``context_length``;
    ``outtype`` does not apply. ``split`` writes a split set (``NAME-00001-of-0000N.gguf`` …);
    the result's ``output`` is then its first shard. ``mmproj_outtype``: the type of a
    vision-language checkpoint's projector (``mmproj-<output>``), f16 unless asked.
    """
    started = time.perf_counter()
    split = split if split is not None and split.active else None
    if is_legacy_file(model):
        if split is not None:
            raise UsageError(
                "`split` does not apply to legacy .bin files",
                hint="convert unsplit, then quantize with the split options",
            )
        return _convert_legacy_file(
            model, output, started, engine=engine, delta_base=delta_base, lora=lora, force=force,
            pre_tokenizer=pre_tokenizer, tokenizer=tokenizer, context_length=context_length,
        )  # fmt: skip
    if tokenizer is not None or context_length is not None:
        raise UsageError(
            "`tokenizer` and `context_length` apply to legacy .bin files only",
            hint="a checkpoint directory brings its own tokenizer and config.json",
        )
    outtype, mmproj_outtype = outtype.lower(), mmproj_outtype.lower()
    for given in (outtype, mmproj_outtype):
        if given not in OUTTYPE_NAMES:
            raise UsageError(
                f"unknown output type {given!r}",
                hint=f"choose one of {', '.join(OUTTYPE_NAMES)}; use `ggufkit quantize` for "
                "k-quants",
            )
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", hint=f"choose one of {', '.join(ENGINES)}")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    model_dir, repo_id, revision = _resolve(model)
    base_dir = _resolve(delta_base)[0] if delta_base is not None else None
    lora_dir = Path(lora) if lora is not None else None
    if lora_dir is not None and base_dir is not None:
        raise UsageError(
            "`lora` and `delta_base` cannot be combined",
            hint="merge the delta first (`ggufkit merge-delta`), then convert it with `lora`",
        )
    config = load_config(model_dir)
    hf_arch = architecture(config, model_dir / "config.json")

    converter_cls = _converter_for(hf_arch) if engine != "upstream" else None
    fallback = _native_refusal(converter_cls, model_dir, config, engine, hf_arch)
    if fallback is not None:
        converter_cls = None
    use_upstream = converter_cls is None and engine != "native" and _upstream_supports(hf_arch)
    if converter_cls is None and not use_upstream:
        from ggufkit.convert.registry import unsupported

        raise unsupported(hf_arch, upstream_too=engine != "native")
    why = f" ({fallback})" if fallback else ""
    if pre_tokenizer is not None and (
        use_upstream or converter_cls is None or not converter_cls.accepts_pre_tokenizer
    ):
        raise UsageError(
            f"`pre_tokenizer` applies to natively converted byte-level BPE models; {hf_arch} "
            f"is not one{why}",
            hint="leave `pre_tokenizer` out",
        )

    name = repo_id.split("/")[-1] if repo_id else model_dir.name
    out = Path(output) if output is not None else Path.cwd() / default_output_name(name, outtype)
    check_output_path(out, inputs=(model_dir,) + ((lora_dir,) if lora_dir else ()))
    existing = out if out.exists() else next(iter(shards_named_like(out) if split else []), None)
    if existing is not None and not force:
        raise UsageError(f"{existing} already exists", hint=EXISTS_HINT)
    vision = use_upstream and _is_vision(
        config, hf_arch, out, force=force, split=split, mmproj_outtype=mmproj_outtype
    )
    if not vision and mmproj_outtype != "f16":
        raise UsageError(
            f"`mmproj_outtype` applies to vision-language checkpoints; {hf_arch} is not one",
            hint="leave `mmproj_outtype` out",
        )
    if vision and (base_dir is not None or lora_dir is not None):
        option = "`delta_base`" if base_dir is not None else "`lora`"
        raise UsageError(
            f"{option} does not apply to a vision-language checkpoint ({hf_arch})",
            hint="merge first with `ggufkit merge-delta` or `ggufkit merge-lora`, then convert "
            "the merged directory",
        )
    from ggufkit.formats.origin import SourceInfo  # light start: it loads numpy

    info = SourceInfo(
        model_dir, repo_id=repo_id, revision=revision, delta_base=base_dir, lora=lora_dir
    )
    chat = choose_chat_template(chat_template, model_dir, repo_id or model_dir.name)

    phases: dict[str, float] = {}
    done: EngineResult
    engine_used: EngineUsed
    mmproj = None
    if vision:
        from ggufkit.convert.vision import convert_vision

        done, mmproj = convert_vision(
            info, out, outtype, chat, hf_arch=hf_arch, phases=phases, mmproj_outtype=mmproj_outtype
        )
        engine_used = "upstream"
    elif use_upstream:
        from ggufkit.convert.upstream import convert_upstream  # loaded only when needed

        done = convert_upstream(info, out, outtype, chat, phases)
        engine_used = "upstream"
        if fallback is not None:
            done.notes.insert(0, f"auto engine: {fallback}; converted through upstream")
        if split is not None:
            out = _split_upstream_output(out, split)
    else:
        from ggufkit.convert.native import convert_native

        assert converter_cls is not None
        done = convert_native(
            converter_cls, info, config, out, outtype, threads, pre_tokenizer, chat, split, phases
        )
        engine_used = "native"
        if split is not None:
            out = _first_shard(out)
    report(chat)
    seconds = time.perf_counter() - started
    log.debug("wrote %s (%d tensors) in %.1f s", out, done.n_tensors, seconds)
    return ConvertResult(
        output=out,
        arch=hf_arch,
        gguf_arch=done.gguf_arch,
        outtype=outtype,
        n_tensors=done.n_tensors,
        n_bytes=done.n_bytes,
        source_bytes=done.source_bytes,
        seconds=seconds,
        engine=engine_used,
        notes=done.notes,
        phases={"prepare": seconds - sum(phases.values()), **phases} if phases else {},
        mmproj=mmproj,
    )


def _is_vision(
    config: dict[str, Any],
    hf_arch: str,
    out: Path,
    *,
    force: bool,
    split: SplitLimits | None,
    mmproj_outtype: str,
) -> bool:
    """A vision-language checkpoint (two files: ``ggufkit.convert.vision``), checked for them."""
    from ggufkit.convert.vision import check_outputs, is_vision_checkpoint

    if not is_vision_checkpoint(config, hf_arch):
        return False
    if split is not None:
        raise UsageError(
            f"{hf_arch} converts into a model and an mmproj file; splitting them is not supported",
            hint="convert without --split-max-size/--split-max-tensors",
        )
    check_outputs(out, force=force, mmproj_outtype=mmproj_outtype)
    return True


# The legacy and upstream engines load only when a conversion needs them: a start-up saved.
def is_legacy_file(model: str | Path) -> bool:
    """Whether ``model`` is a pre-GGUF .bin file (``ggufkit.convert.legacy`` converts it)."""
    if not Path(model).is_file():
        return False
    from ggufkit.convert.legacy import is_legacy_file as sniff

    return sniff(model)


def _native_refusal(
    converter_cls: type[ModelConverter] | None,
    model_dir: Path,
    config: dict[str, Any],
    engine: str,
    hf_arch: str,
) -> str | None:
    """Why the native converter cannot take the checkpoint, when ``auto`` falls back to upstream
    for it (None: native takes it). With ``native``, or no upstream converter, it raises."""
    if converter_cls is None:
        return None
    try:
        converter_cls.check_native(model_dir, config)
    except NativeUnsupportedError as exc:
        if engine == "native" or not _upstream_supports(hf_arch):
            exc.hint = exc.hint or (
                'convert with `engine="upstream"` (in a workspace: engine = "upstream" in '
                "ggufkit.toml)"
            )
            raise
        log.info("native engine: %s; converting through the pinned upstream converter", exc)
        return f"the native engine cannot take it: {exc}"
    return None


def _converter_for(hf_arch: str) -> type[ModelConverter] | None:
    from ggufkit.convert.registry import converter_for

    return converter_for(hf_arch)


def _upstream_supports(hf_arch: str) -> bool:
    from ggufkit.convert.upstream import upstream_supports

    return upstream_supports(hf_arch)


def _convert_legacy_file(
    model: str | Path, output: str | Path | None, started: float, *, engine: str, **kwargs: Any
) -> ConvertResult:
    from ggufkit.convert.legacy import convert_legacy

    if engine == "upstream" or kwargs.pop("delta_base") is not None or kwargs.pop("lora"):
        raise UsageError(
            f'{model} is a legacy GGML file: `engine="upstream"`, `delta_base` and `lora` do not '
            "apply",
            hint="leave those options out",
        )
    done = convert_legacy(model, output, **kwargs)
    return ConvertResult(
        output=done.output,
        arch=done.source_format,
        gguf_arch=done.gguf_arch,
        outtype=done.outtype,
        n_tensors=done.n_tensors,
        n_bytes=done.n_bytes,
        source_bytes=done.source_bytes,
        seconds=time.perf_counter() - started,
        engine="legacy",
        notes=done.notes,
    )


def _split_upstream_output(out: Path, split: SplitLimits) -> Path:
    """Cut the upstream converter's single file with the built ``llama-gguf-split``."""
    from ggufkit.convert.native import remove_shards
    from ggufkit.llamacpp.gguf_split import split_file

    remove_shards(out)  # the tool writes in place
    split_file(out, out.with_name(out.stem), split.tool_args())
    out.unlink()
    return _first_shard(out)


def _first_shard(out: Path) -> Path:
    return shards_named_like(out, "00001")[0]
