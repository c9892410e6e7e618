"""`ggufkit quantize`: one GGUF to one or more llama.cpp quantization types.

Everything that can be checked is checked before llama.cpp writes a byte: the input is a readable
GGUF in this machine's byte order and not already quantized (unless ``allow_requantize``), every
type exists in the pinned build, outputs are not the input, a dry run of each type (llama.cpp's own
``--dry-run``) says whether it needs an importance matrix and how large it will be, and the disk
has room for all of them. Each output is written under a temporary name and renamed on success.

Outputs are named ``<stem>-<TYPE>.gguf`` beside the input, where ``<stem>`` is the input's name
without ``.gguf`` and without a trailing precision such as ``-f16``/``-bf16``/``-Q8_0``:
``my-model-f16.gguf`` -> ``my-model-Q4_0.gguf``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ggufkit.core.errors import (
    DiskSpaceError,
    GGUFFormatError,
    InputError,
    QuantizeError,
    UsageError,
)
from ggufkit.core.fsutil import (
    atomic_output,
    check_free_disk,
    human_bytes,
    same_file,  # noqa: F401 (tests and callers use quantize.same_file)
)
from ggufkit.core.log import get_logger, progress
from ggufkit.formats.gguf_reader import check_gguf, read_gguf
from ggufkit.formats.gguf_split import SplitLimits, shards_named_like, split_set
from ggufkit.formats.ggufinfo import GGUFInfo
from ggufkit.quantize.engines import (
    IMATRIX_HINT,
    DryRun,
    Engine,
    KVOverride,
    QuantizeOptions,
    binary_engine,
    is_copy,
    may_need_imatrix,
    parse_kv_override,
)
from ggufkit.quantize.outputs import plan_outputs, refuse_existing
from ggufkit.quantize.types import QuantType, TensorMix, TypeTable, tensor_mix

if TYPE_CHECKING:
    from ggufkit.quantize.keep_split import PlannedSize

__all__ = [
    "KVOverride",
    "QuantizeOptions",
    "QuantizeResult",
    "dry_run",
    "list_types",
    "parse_kv_override",
    "plan_outputs",
    "quantize",
]

log = get_logger("quantize")


@dataclass
class QuantizeResult:
    """One quantized output: what the workspace manifest records and ``--json`` prints."""

    input: Path
    output: Path
    type: str
    size: int
    seconds: float
    bits_per_weight: float | None
    engine: str
    imatrix: Path | None = None
    log_path: Path | None = None
    tool_seconds: float | None = None  # of ``seconds``, llama-quantize's lifetime (spawn to reap)
    mix: TensorMix | None = None  # the tensors' real types, read from the written file

    @property
    def fallback_note(self) -> str | None:
        """``Q4_K_M: 166 of 211 tensors fell back to Q5_0: rows of 576 ...``, or None."""
        return None if self.mix is None else self.mix.note()

    def to_json(self) -> dict[str, object]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "type": self.type,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "tool_seconds": None if self.tool_seconds is None else round(self.tool_seconds, 3),
            "bits_per_weight": None
            if self.bits_per_weight is None
            else round(self.bits_per_weight, 4),
            "engine": self.engine,
            "imatrix": None if self.imatrix is None else str(self.imatrix),
            "log": None if self.log_path is None else str(self.log_path),
            **(self.mix.to_json() if self.mix is not None else {}),
        }


def list_types(*, measure: bool = True) -> TypeTable:
    """The types the pinned build accepts (``ggufkit quantize --list``); with ``measure``, each
    with its mix's bits per weight (:mod:`ggufkit.quantize.mix_bpw`, measured once per build)."""
    engine = binary_engine()
    table = engine.table()
    if not measure:
        return table
    from ggufkit.quantize.mix_bpw import measured_mix_bpw

    mix = measured_mix_bpw(engine, table)
    return TypeTable(
        tuple(dataclasses.replace(t, mix_bits_per_weight=mix.get(t.name)) for t in table.types),
        table.source,
    )


def check_input(source: Path) -> GGUFInfo:
    """A GGUF that llama.cpp can read on this machine, with tensors to quantize."""
    info = check_gguf(source)
    if info.byte_order != sys.byteorder:
        raise GGUFFormatError(
            f"{source} is a {info.byte_order}-endian GGUF; llama.cpp on this "
            f"{sys.byteorder}-endian machine cannot read it",
            hint="convert the model again on (or for) this kind of machine",
            path=source,
        )
    if not info.tensors:
        raise GGUFFormatError(f"{source} holds no tensors: nothing to quantize", path=source)
    return info


def check_not_quantized(info: GGUFInfo) -> None:
    """llama.cpp refuses to re-quantize quantized tensors without --allow-requantize: say so first."""
    quantized = info.quantized_tensors
    if quantized:
        kinds = ", ".join(sorted({t.type_name for t in quantized}))
        raise QuantizeError(
            f"{info.path} is already quantized ({kinds}: {len(quantized)} of {len(info.tensors)} "
            "tensors); quantizing it again loses more quality than quantizing the original",
            hint="quantize from the f16/bf16/f32 GGUF, or pass --allow-requantize if you mean it",
            path=info.path,
        )


def _preflight(
    engine: Engine,
    source: Path,
    info: GGUFInfo,
    jobs: list[tuple[QuantType, Path]],
    options: QuantizeOptions,
) -> None:
    """Before quantizing anything: dry-run the types that may need an importance matrix (reads
    the header only, but ~0.1 s on a 1B model, so not for types that cannot), then check the disk:
    against an upper bound first, and, only if that does not fit, against the dry runs' sizes."""
    if options.imatrix is not None and not Path(options.imatrix).is_file():
        raise InputError(f"--imatrix {options.imatrix} does not exist", hint=IMATRIX_HINT)
    plans: dict[str, DryRun] = {}
    if options.imatrix is None:
        for quant_type, _ in jobs:
            if may_need_imatrix(quant_type):
                plans[quant_type.name] = engine.dry_run(source, quant_type, options)
        needing = [name for name, plan in plans.items() if plan.requires_imatrix]
        if needing:
            raise QuantizeError(
                f"{', '.join(needing)} need{'s' if len(needing) == 1 else ''} an importance matrix "
                f"for {source.name}: without one llama.cpp refuses (the result would be garbage)",
                hint=IMATRIX_HINT,
            )
    header = info.data_offset + 4096  # metadata is copied; allow for the extra keys
    what = f"{len(jobs)} quantized file{'s' * (len(jobs) > 1)}"

    def upper_bound(quant_type: QuantType) -> int:
        if is_copy(quant_type):
            return info.tensor_bytes
        bits = max(16.0, quant_type.bits_per_weight or 0)  # no type stores more, bar F32
        return int(info.parameter_count * bits / 8)

    try:
        check_free_disk(jobs[0][1], sum(upper_bound(t) + header for t, _ in jobs), what=what)
    except DiskSpaceError:
        for quant_type, _ in jobs:
            if quant_type.name not in plans:
                plans[quant_type.name] = engine.dry_run(source, quant_type, options)
        exact = [plans[t.name].size_bytes for t, _ in jobs]
        need = sum(
            (size if size is not None else upper_bound(t)) + header
            for size, (t, _) in zip(exact, jobs, strict=True)
        )
        check_free_disk(jobs[0][1], need, what=what)


def _jobs(
    source: Path,
    types: Sequence[str],
    output: str | Path | None,
    outdir: str | Path | None,
    options: QuantizeOptions,
    engine: Engine | None,
) -> tuple[GGUFInfo, Engine, list[tuple[QuantType, Path]]]:
    """The checks every run makes first: the input, the types, the outputs."""
    if not types:
        raise UsageError(
            "no quantization type given", hint="e.g. `ggufkit quantize model-f16.gguf q4_0`"
        )
    info = check_input(source)
    runner = engine if engine is not None else binary_engine()
    table = runner.table()
    wanted = table.resolve(types)
    if not options.allow_requantize and not all(is_copy(t) for t in wanted):
        check_not_quantized(info)
    targets = plan_outputs(
        source,
        wanted,
        table,
        output=Path(output) if output is not None else None,
        outdir=Path(outdir) if outdir is not None else None,
    )
    return info, runner, list(zip(wanted, targets, strict=True))


def quantize(
    source: str | Path,
    types: Sequence[str],
    *,
    output: str | Path | None = None,
    outdir: str | Path | None = None,
    options: QuantizeOptions | None = None,
    engine: Engine | None = None,
    split: SplitLimits | None = None,
    force: bool = False,
) -> list[QuantizeResult]:
    """Quantize ``source`` to each of ``types`` (names as ``llama-quantize`` takes them, any case).

    ``source`` may be the first shard of a split set. ``split``: cut each output into a split
    set with the built ``llama-gguf-split`` (its result names the first shard);
    ``options.keep_split``: keep the input's shards instead, one output shard each.
    ``engine``: the built ``llama-quantize`` unless given (tests pass a stand-in).
    Returns one :class:`QuantizeResult` per type, in order. Nothing is written when a check fails;
    a failing type leaves no file, and the types before it stay done. An existing output is
    refused unless ``force`` (as ``convert`` does).
    """
    from ggufkit.quantize.keep_split import check_keep_split

    source = Path(source)
    options = options or QuantizeOptions()
    info, runner, jobs = _jobs(source, types, output, outdir, options, engine)
    check_keep_split(source, options, split is not None and split.active)
    _preflight(runner, source, info, jobs, options)
    if not force:  # after the checks of the types and options, before anything is written
        refuse_existing([target for _, target in jobs], split)
    results = []
    for quant_type, target in jobs:
        result = _quantize_one(runner, source, quant_type, target, options)
        if split is not None and split.active:
            result = split_output(result, split)
        results.append(result)
    return results


def dry_run(
    source: str | Path,
    types: Sequence[str],
    *,
    output: str | Path | None = None,
    outdir: str | Path | None = None,
    options: QuantizeOptions | None = None,
    engine: Engine | None = None,
) -> list[PlannedSize]:
    """Each type's output size before quantizing (llama-quantize's ``--dry-run``: the header is
    read, nothing is written), with the options it would run with."""
    from ggufkit.quantize.keep_split import planned_size

    source = Path(source)
    options = options or QuantizeOptions()
    info, runner, jobs = _jobs(source, types, output, outdir, options, engine)
    return [
        planned_size(t, target, runner.dry_run(source, t, options), info.data_offset)
        for t, target in jobs
    ]


def split_output(result: QuantizeResult, split: SplitLimits) -> QuantizeResult:
    """Cut a finished output into a split set beside it; the unsplit file is removed."""
    from ggufkit.llamacpp.gguf_split import split_file

    target = result.output
    prefix = target.with_name(target.name.removesuffix(".gguf"))
    for stale in shards_named_like(target):
        stale.unlink()  # shards of an earlier split of the same name
    split_file(target, prefix, split.tool_args())
    firsts = shards_named_like(target, "00001")
    if len(firsts) != 1:
        raise QuantizeError(f"llama-gguf-split wrote no split set for {target}")
    target.unlink()
    shards = split_set(firsts[0])
    log.info("%s: split into %d files", target.name, len(shards))
    return dataclasses.replace(result, output=firsts[0], size=sum(f.stat().st_size for f in shards))


def _quantize_one(
    engine: Engine, source: Path, quant_type: QuantType, target: Path, options: QuantizeOptions
) -> QuantizeResult:
    if target.exists():
        log.info("replacing %s", target)
    log.info("quantizing %s -> %s (%s)", source.name, target, quant_type.name)
    started = time.perf_counter()
    if options.keep_split:
        from ggufkit.quantize.keep_split import quantize_kept_split

        done = quantize_kept_split(engine, source, quant_type, target, options)
        info = read_gguf(done.first, max_array_items=0)
        return QuantizeResult(
            input=source,
            output=done.first,
            type=quant_type.name,
            size=done.size,
            seconds=time.perf_counter() - started,
            bits_per_weight=done.report.bits_per_weight or info.bits_per_weight,
            engine=engine.name,
            imatrix=options.imatrix,
            log_path=done.report.log_path,
            tool_seconds=done.report.tool_seconds,
            mix=tensor_mix(info),
        )
    with progress(None, f"quantize {quant_type.name}", unit="tensor") as bar:

        def on_progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        with atomic_output(target) as tmp:
            report = engine.run(source, tmp, quant_type, options, on_progress)
            # The tensor table of what was written: its real types (and, where llama.cpp did not
            # say, the bits per weight). Arrays are walked, not decoded: a big vocabulary costs
            # a few ms, not a part of the start-up budget.
            try:
                info = read_gguf(tmp, max_array_items=0)
            except GGUFFormatError as exc:
                raise QuantizeError(f"{engine.name} wrote no valid GGUF file to {tmp}") from exc
            bits_per_weight = report.bits_per_weight or info.bits_per_weight
            mix = tensor_mix(info)
            size = tmp.stat().st_size
    seconds = time.perf_counter() - started
    result = QuantizeResult(
        input=source,
        output=target,
        type=quant_type.name,
        size=size,
        seconds=seconds,
        bits_per_weight=bits_per_weight,
        engine=engine.name,
        imatrix=options.imatrix,
        log_path=report.log_path,
        tool_seconds=report.tool_seconds,
        mix=mix,
    )
    if mix.fallback:
        log.warning("%s", mix.note())
    log.info(
        "%s: %s, %s bpw, %.1f s",
        target.name,
        human_bytes(result.size),
        f"{result.bits_per_weight:.2f}" if result.bits_per_weight else "?",
        seconds,
    )
    return result
