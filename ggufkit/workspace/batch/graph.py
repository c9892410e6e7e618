"""The step graph of a plan: download → convert (delta merged on the fly) → imatrix → quantize ×
types → eval → publish, per model, with each step's estimated memory, disk, time and CPUs.

The estimates are the per-step costs measured on the 2-core reference machine (FINDINGS.md and
docs/scale.md), scaled by the size of the converted file; both schedulers read them (the local one
against its memory and disk budget, Ray as each task's ``num_cpus`` and ``memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ggufkit.core.errors import ConfigError
from ggufkit.core.fsutil import human_bytes, read_json
from ggufkit.quantize.types import nominal_bpw
from ggufkit.workspace.batch.plan import BatchPlan, ModelSpec

MIB = 1 << 20
GB = 1e9
# Measured here (docs/scale.md): convert streams at ~120 MB/s from disk (508 MB/s page-cached);
# llama-quantize takes ~2.2 s/GB (q4_0), ~2.5 s/GB (q8_0), ~20 s/GB (k-quants) of f16 input.
CONVERT_BYTES_PER_S = 120e6
QUANTIZE_S_PER_GB = {"legacy": 2.5, "k": 20.0}
# One context window through the model, per GB of f16, for imatrix and perplexity chunks.
CHUNK_S_PER_GB = 2.0
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass(frozen=True)
class Step:
    id: str  # "<model>:<kind>[:<type>]"
    model: str
    kind: str  # download, convert, imatrix, quantize, eval, publish
    deps: tuple[str, ...]
    memory: int  # bytes of RAM at peak
    disk: int  # bytes written
    seconds: float
    cpus: int = 1
    qtype: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.qtype}" if self.qtype else self.kind


def f16_estimate(model: ModelSpec, outtype: str = "f16") -> int | None:
    """The converted file's size from the checkpoint's weight files (None: not on disk yet)."""
    folder = Path(model.source)
    if not folder.is_dir():
        return None
    weights = sum(
        p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    try:
        config = read_json(folder / "config.json", ConfigError)
    except ConfigError:
        config = {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
    per_weight = 4 if dtype == "float32" else 2
    out_bytes = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1.0625}.get(outtype, 2)
    return int(weights / per_weight * out_bytes)


def _quantized_size(f16: int, qtype: str) -> int:
    bpw = nominal_bpw(qtype.upper()) or 8.0
    return int(f16 * bpw / 16)


def build_graph(plan: BatchPlan) -> list[Step]:
    """Every step of every model, each after the steps it depends on."""
    steps: list[Step] = []
    for model in plan.models:
        steps += model_steps(plan, model)
    return steps


def model_steps(plan: BatchPlan, model: ModelSpec) -> list[Step]:
    name = model.name
    size = f16_estimate(model, plan.outtype)
    f16 = size if size is not None else 0  # a Hub model not downloaded: unknown until then
    gb = f16 / GB
    steps: list[Step] = []
    first: tuple[str, ...] = ()
    if model.from_hub or (
        model.delta_base is not None and not Path(model.delta_base).is_absolute()
    ):
        steps.append(Step(f"{name}:download", name, "download", (), 256 * MIB, f16, 0.0))
        first = (steps[-1].id,)
    convert_id = f"{name}:convert"
    steps.append(
        Step(
            convert_id,
            name,
            "convert",
            first,
            memory=512 * MIB + f16 // 2 * (2 if model.delta_base else 1),
            disk=f16,
            seconds=f16 / CONVERT_BYTES_PER_S * (2 if model.delta_base else 1),
        )
    )
    quantize_deps: tuple[str, ...] = (convert_id,)
    if plan.imatrix.enabled:
        chunks = plan.imatrix.chunks or 100
        steps.append(
            Step(
                f"{name}:imatrix",
                name,
                "imatrix",
                (convert_id,),
                memory=256 * MIB + f16,
                disk=8 * MIB,
                seconds=chunks * CHUNK_S_PER_GB * gb * plan.imatrix.ctx / 512,
                cpus=2,
            )
        )
        quantize_deps = (convert_id, steps[-1].id)
    quantized = []
    for qtype in plan.types:
        kind = "k" if "_k" in qtype else "legacy"
        steps.append(
            Step(
                f"{name}:quantize:{qtype}",
                name,
                "quantize",
                quantize_deps,
                memory=256 * MIB + f16 // 4,
                disk=_quantized_size(f16, qtype),
                seconds=QUANTIZE_S_PER_GB[kind] * gb,
                qtype=qtype,
            )
        )
        quantized.append(steps[-1].id)
    last = tuple(quantized)
    if plan.eval.enabled:
        chunks = plan.eval.chunks or 20
        files = 1 + len(plan.types)
        steps.append(
            Step(
                f"{name}:eval",
                name,
                "eval",
                (convert_id, *quantized),
                memory=256 * MIB + f16,
                disk=(f16 // 512) * chunks,  # the KL-divergence base logits, deleted afterwards
                seconds=chunks * CHUNK_S_PER_GB * gb * files * plan.eval.ctx / 512,
                cpus=2,
            )
        )
        last = (steps[-1].id,)
    if plan.publish is not None:
        upload = f16 + sum(_quantized_size(f16, t) for t in plan.types)
        steps.append(Step(f"{name}:publish", name, "publish", last, 256 * MIB, 0, upload / 50e6))
    return steps


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:.1f} h"


def format_graph(steps: list[Step]) -> str:
    """The ``--dry-run`` table: each step, what it waits for, and its estimated costs."""
    rows = [("step", "after", "memory", "disk", "time", "cpus")]
    for step in steps:
        after = ", ".join(d.split(":", 1)[1] for d in step.deps) or "-"
        rows.append(
            (
                step.id,
                after,
                human_bytes(step.memory),
                human_bytes(step.disk),
                _seconds(step.seconds),
                str(step.cpus),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    total = sum(s.seconds for s in steps)
    lines.append(f"{len(steps)} steps; {_seconds(total)} of work if run one at a time")
    return "\n".join(line.rstrip() for line in lines)
