"""The typed results of ``ggufkit bnb``, their JSON form and the guides' before/after table.

JSON shape (``BnbReport.to_json()``; read back with ``BnbReport.from_json``). Missing
measurements are ``null``::

    {
      "schema": "ggufkit.bnb/1",
      "model": "path/to/model", "device": "cpu", "device_name": "…", "compute_dtype": "f32",
      "corpus": "…", "corpus_sha256": "…", "corpus_tokens": 17776, "ctx": 512, "chunks": 34,
      "prompts": ["…"], "runs": 3, "max_new_tokens": 32, "seed": 0,
      "versions": {"torch": "…", "transformers": "…", "bitsandbytes": "…"},
      "notes": ["…"],
      "results": [
        {"name": "baseline", "status": "ok", "bits": 32, "load_s": 0.4, "gen_s": 3.1, "tokens": 96,
         "tokens_per_s": 31.0, "ms_per_token": 32.3, "footprint_bytes": 14600000, "bpw": 32.0,
         "peak_allocated_bytes": null, "peak_reserved_bytes": null, "peak_rss_bytes": 512000000,
         "ppl": 12.3, "ppl_err": 0.4, "kld_mean": null, "top1_agreement": null,
         "mean_abs_dlogit": null, "weight_rel_error": null, "notes": [], "outputs": ["…"]},
        {"name": "nf4", "status": "ok", "kld_mean": 0.03, "top1_agreement": 0.9,
         "mean_abs_dlogit": 0.06, "weight_rel_error": 0.092, "quantized_layers": 14,
         "kept_layers": ["lm_head"], "same_output": 0.5, "saved_to": null, …},
        {"name": "fp4-dq", "status": "skipped", "reason": "…"}
      ]
    }
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

from ggufkit.core.fsutil import human_bytes

SCHEMA = "ggufkit.bnb/1"
BASELINE = "baseline"
MISSING = "—"


@dataclass(kw_only=True)
class Quality:
    """Perplexity on the corpus and, for a mode, how far its logits are from the baseline's."""

    ppl: float | None = None
    ppl_err: float | None = None
    kld_mean: float | None = None
    kld_err: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    top1_err: float | None = None
    mean_abs_dlogit: float | None = None
    max_abs_dlogit: float | None = None


class ResultRow:
    """``ok``, ``to_json`` and ``from_json`` of a row of results (a dataclass with a status)."""

    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModeResult(Quality, ResultRow):
    """One row: the baseline or one bitsandbytes mode. ``None`` means "not measured"."""

    name: str
    status: str = "ok"  # "ok", "skipped" or "failed"
    reason: str | None = None  # why it was skipped or failed
    description: str = ""
    bits: int | None = None
    load_s: float | None = None
    gen_s: float | None = None
    runs: int | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    ms_per_token: float | None = None
    footprint_bytes: int | None = None  # parameters, buffers and quantization constants
    loaded_footprint_bytes: int | None = None  # the same right after loading, before a forward
    bpw: float | None = None  # footprint bits per parameter of the unquantized model
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_rss_bytes: int | None = None
    weight_rel_error: float | None = None  # relative Frobenius error of the quantized layers
    quantized_layers: int | None = None
    kept_layers: list[str] = field(default_factory=list)  # Linear layers left unquantized
    same_output: float | None = None  # fraction of prompts generated exactly as the baseline
    outputs: list[str] = field(default_factory=list)
    saved_to: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BnbReport:
    model: str
    device: str
    device_name: str
    compute_dtype: str
    corpus: str | None
    corpus_sha256: str | None
    corpus_tokens: int | None
    ctx: int | None
    chunks: int | None
    prompts: list[str]
    runs: int
    max_new_tokens: int
    seed: int
    n_params: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: list[ModeResult] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def baseline(self) -> ModeResult | None:
        return next((r for r in self.results if r.name == BASELINE and r.ok), None)

    @property
    def failed(self) -> list[ModeResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = [r.to_json() for r in self.results]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BnbReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "results"}
        return cls(**values, results=[ModeResult.from_json(r) for r in data.get("results", [])])


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return MISSING if value is None else f"{value:{spec}}{suffix}"


def _bytes(value: int | None) -> str:
    return MISSING if value is None else human_bytes(value)


def memory_cell(result: ModeResult, device: str) -> str:
    if device.startswith("cuda"):
        return (
            f"{_bytes(result.peak_allocated_bytes)} ({_bytes(result.peak_reserved_bytes)} reserved)"
        )
    return f"{_bytes(result.footprint_bytes)} (peak RSS {_bytes(result.peak_rss_bytes)})"


def memory_of(result: ModeResult, device: str) -> int | None:
    """The memory figure the table compares: peak allocated on CUDA, the footprint on CPU."""
    return result.peak_allocated_bytes if device.startswith("cuda") else result.footprint_bytes


def markdown(report: BnbReport) -> str:
    """The guides' before/after table, then skipped modes and notes."""
    from ggufkit.core.text import markdown_table

    base = report.baseline
    base_memory = memory_of(base, report.device) if base else None
    header = [
        "Mode",
        "Load",
        f"Time ({report.runs} runs)",
        "Tokens",
        "Tokens/s",
        "Memory" + (" (peak)" if report.device.startswith("cuda") else " (model)"),
        "vs base",
        "PPL",
        "KLD",
        "Top-1",
        "Δlogit (mean abs)",
        "W err",
    ]
    rows = []
    for r in (r for r in report.results if r.ok):
        memory = memory_of(r, report.device)
        ratio = f"{memory / base_memory:.2f}×" if memory and base_memory else MISSING
        rows.append(
            [
                r.name if r.name != BASELINE else f"{BASELINE} ({report.compute_dtype})",
                _num(r.load_s, ".2f", " s"),
                _num(r.gen_s, ".2f", " s"),
                _num(r.tokens, "d"),
                _num(r.tokens_per_s, ".1f"),
                memory_cell(r, report.device),
                ratio,
                _num(r.ppl, ".3f") + (f" ± {r.ppl_err:.3f}" if r.ppl_err is not None else ""),
                _num(r.kld_mean, ".4f"),
                _num(None if r.top1_agreement is None else 100 * r.top1_agreement, ".1f", "%"),
                _num(r.mean_abs_dlogit, ".4f"),
                _num(r.weight_rel_error, ".3f"),
            ]
        )
    lines = [
        f"{report.model} on {report.device_name} ({report.device}), compute dtype "
        f"{report.compute_dtype}, {len(report.prompts)} prompt(s) × {report.runs} runs × "
        f"{report.max_new_tokens} new tokens, greedy, seed {report.seed}",
        "",
        markdown_table(header, rows, "lrrrrrrrrrrr") if rows else "(no mode ran)",
    ]
    if report.ctx:
        lines += [
            "",
            f"Quality on {report.corpus}: {report.chunks} chunks of {report.ctx} tokens "
            "(second halves scored, as llama-perplexity); KLD, top-1 and |Δlogit| against the baseline.",
        ]
    others = [r for r in report.results if not r.ok]
    if others:
        lines += ["", *(f"- {r.name}: {r.status}: {r.reason}" for r in others)]
    lines += notes_section(report.notes, report.results)
    return "\n".join(lines)


def notes_section(general: list[str], rows: Sequence[Any]) -> list[str]:
    """``Notes:`` lines: ``general``, then each row's (``.name``, ``.notes``); a note shared by
    several rows (the same guard) is shown once, naming them all."""
    by_note: dict[str, list[str]] = {}
    for row in rows:
        for note in row.notes:
            by_note.setdefault(note, []).append(row.name)
    notes = [*general, *(f"{', '.join(names)}: {note}" for note, names in by_note.items())]
    return ["", "Notes:", *(f"- {n}" for n in notes)] if notes else []
