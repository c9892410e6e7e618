"""The typed results of ``ggufkit bnb --image``, their JSON form and the seed's table.

One row per way of answering: the unquantized model, each bitsandbytes mode, and the GGUF pair
through llama.cpp when one is given. JSON shape (``ImageReport.to_json()``; missing
measurements are ``null``)::

    {
      "schema": "ggufkit.bnb-image/1",
      "model": "path/to/checkpoint", "image": "cat.png", "question": "What is in the picture?",
      "device": "cpu", "device_name": "…", "compute_dtype": "f16", "runs": 10,
      "max_new_tokens": 32, "seed": 0,
      "quantization": {"nf4-dq": {"bnb_4bit_quant_type": "nf4", "llm_int8_skip_modules": […], …}},
      "versions": {"torch": "…"}, "notes": ["…"],
      "rows": [
        {"name": "baseline", "kind": "transformers", "status": "ok", "answer": "…",
         "gen_s": 3.1, "runs": 10, "tokens": 320, "tokens_per_s": 103.2, "load_s": 0.4,
         "footprint_bytes": 4100000, "peak_rss_bytes": 512000000, "peak_allocated_bytes": null,
         "size_bytes": null, "saved_to": null, "same_answer": null, "notes": []},
        {"name": "nf4-dq", "kind": "bitsandbytes", "quantized_layers": 28, "kept_layers": 17,
         "saved_to": "out/nf4-dq", "size_bytes": 2900000, "same_answer": false, …},
        {"name": "gguf", "kind": "llama.cpp", "files": ["m-F16.gguf", "mmproj-m-F16.gguf"],
         "size_bytes": 1400000, "peak_rss_bytes": 90000000, …}
      ]
    }
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ggufkit.bnb.results import BASELINE, MISSING, ResultRow, notes_section
from ggufkit.core.fsutil import human_bytes

SCHEMA = "ggufkit.bnb-image/1"
GGUF = "gguf"
RANDOM_WEIGHTS = (
    "the weights are random (a tiny seeded model): its answers are noise, and only show that "
    "each path reads the picture and answers"
)


@dataclass
class ImageRow(ResultRow):
    """One way of answering the question; ``None`` means "not measured"."""

    name: str
    kind: str = "bitsandbytes"  # "transformers" (the baseline), "bitsandbytes" or "llama.cpp"
    status: str = "ok"  # "ok", "skipped" or "failed"
    reason: str | None = None
    description: str = ""
    answer: str | None = None  # the first run's greedy answer
    gen_s: float | None = None  # all runs
    runs: int | None = None
    tokens: int | None = None  # generated over all runs
    tokens_per_s: float | None = None
    load_s: float | None = None
    footprint_bytes: int | None = None  # parameters, buffers and quantization constants
    peak_rss_bytes: int | None = None  # CPU: peak RSS (the process's, or llama.cpp's)
    peak_allocated_bytes: int | None = None  # CUDA
    size_bytes: int | None = None  # on disk: the saved model, or the GGUF pair
    files: list[str] = field(default_factory=list)  # the GGUF pair
    saved_to: str | None = None
    quantized_layers: int | None = None
    kept_layers: int | None = None  # Linear layers left unquantized
    same_answer: bool | None = None  # the baseline's answer, word for word
    notes: list[str] = field(default_factory=list)


@dataclass
class ImageReport:
    model: str
    image: str
    question: str
    device: str
    device_name: str
    compute_dtype: str
    runs: int
    max_new_tokens: int
    seed: int
    quantization: dict[str, Any] = field(default_factory=dict)  # mode -> BitsAndBytesConfig
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rows: list[ImageRow] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def baseline(self) -> ImageRow | None:
        return next((r for r in self.rows if r.name == BASELINE and r.ok), None)

    @property
    def failed(self) -> list[ImageRow]:
        return [r for r in self.rows if r.status == "failed"]

    def add(self, row: ImageRow) -> None:
        """Append ``row``, noting whether it answered as the baseline did."""
        base = self.baseline
        if base is not None and row is not base and row.ok and row.answer is not None:
            row.same_answer = row.answer == base.answer
        self.rows.append(row)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [r.to_json() for r in self.rows]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "rows"}
        return cls(**values, rows=[ImageRow.from_json(r) for r in data.get("rows", [])])


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return MISSING if value is None else f"{value:{spec}}{suffix}"


def _size(value: int | None) -> str:
    return MISSING if value is None else human_bytes(value)


def _answer(text: str | None, limit: int = 40) -> str:
    if text is None:
        return MISSING
    flat = " ".join(text.split()).replace("|", "\\|")
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def memory_cell(row: ImageRow, device: str) -> str:
    """Peak memory as the text path measures it: CUDA max allocated, else peak RSS."""
    if row.kind != "llama.cpp" and device.startswith("cuda"):
        return _size(row.peak_allocated_bytes)
    peak = _size(row.peak_rss_bytes) + " RSS"
    if row.footprint_bytes is not None:
        return f"{peak} (model {_size(row.footprint_bytes)})"
    return peak


def markdown(report: ImageReport) -> str:
    """The seed's table: the answer, the time for N runs, the tokens, memory and size."""
    from ggufkit.core.text import markdown_table

    header = ["Path", "Answer", f"Time ({report.runs} runs)", "Tokens", "Tokens/s", "Memory",
              "Size", "= base"]  # fmt: skip
    rows = []
    for r in (r for r in report.rows if r.ok):
        label = f"{BASELINE} ({report.compute_dtype})" if r.name == BASELINE else r.name
        same = MISSING if r.same_answer is None else ("yes" if r.same_answer else "no")
        rows.append([label, _answer(r.answer), _cell(r.gen_s, ".2f", " s"),
                     _cell(r.tokens, "d"), _cell(r.tokens_per_s, ".1f"),
                     memory_cell(r, report.device), _size(r.size_bytes), same])  # fmt: skip
    lines = [
        f"{report.model} on {report.device_name} ({report.device}): {report.question!r} about "
        f"{report.image}, {report.runs} runs × up to {report.max_new_tokens} new tokens, greedy, "
        f"seed {report.seed}",
        "",
        markdown_table(header, rows, "llrrrrrl") if rows else "(no path ran)",
    ]
    if report.quantization:
        lines += ["", "BitsAndBytesConfig:"]
        for mode, kwargs in report.quantization.items():
            lines.append(f"- {mode}: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    others = [r for r in report.rows if not r.ok]
    if others:
        lines += ["", *(f"- {r.name}: {r.status}: {r.reason}" for r in others)]
    lines += notes_section(report.notes, report.rows)
    return "\n".join(lines)
