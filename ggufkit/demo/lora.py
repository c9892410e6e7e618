"""The demo's LoRA section: the embedded adapter three ways, and its text in ``results.md``.

``tiny-llama-milton-lora`` (a PEFT LoRA of tiny-llama, r 8, trained on *Paradise Lost*) runs as
(1) llama.cpp's adapter GGUF (``convert-lora``) applied to the base F16 at run time, (2) the
GGUF with the adapter merged while converting (``convert --lora``) and (3) PEFT in transformers:
the same prompt's greedy answer from each, ``verify``'s logits of (1) and (2) against (3), and
held-out perplexity of the base, (2) and (1) on the Milton text the delta is measured on.
:mod:`ggufkit.demo.lora_run` runs it; this module holds the result and renders it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.cmdline import shown

if TYPE_CHECKING:
    from ggufkit.evaluate import EvalReport

ADAPTER = "tiny-llama-milton-lora"  # ggufkit.data.embedded_adapter; its base is tiny-llama
BASE = "tiny-llama"  # the demo model whose F16 the adapter is applied to
MERGED = "tiny-llama-lora-merged"  # the workspace name of the merged GGUF
PROMPT = "So spake the Angel, and"
CORPUS = "heldout-milton.txt"  # Paradise Regained, as for the Milton delta
PEFT_MODULES = ("torch", "transformers", "peft")  # PEFT's answer and verify's reference
ADAPTER_MODULES = ("torch",)  # convert-lora runs the pinned upstream script, which imports torch
# The routes, in the order they are shown: the adapter GGUF at run time, merged, PEFT.
ROUTES = {
    "adapter": "base F16 + adapter GGUF (`--lora`)",
    "merged": "merged GGUF (`convert --lora`)",
    "peft": "PEFT in transformers (fp32)",
}
COLUMNS = {"base": "base F16", "merged": "merged F16", "adapter": "base F16 + LoRA GGUF"}


@dataclass
class Answer:
    """One route's greedy continuation of the prompt, and the command that gives it."""

    route: str  # a ROUTES key
    text: str
    tokens: int
    command: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Check:
    """``verify`` of one GGUF route against PEFT: its logits, position by position."""

    route: str
    rel_diff: float  # max |Δlogit| / max |logit|
    argmax_agreement: float
    limit: float | None
    passed: bool
    positions: int
    json: Path

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "json": str(self.json)}


@dataclass
class LoraRun:
    adapter_dir: Path
    base_f16: Path
    merged: Path
    adapter_gguf: Path | None  # None: torch is missing (convert-lora needs it)
    prompt: str
    answers: dict[str, Answer] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    eval_json: Path | None = None  # base F16 and merged F16
    adapter_eval_json: Path | None = None  # base F16 with the adapter GGUF
    report: EvalReport | None = None
    adapter_report: EvalReport | None = None
    skipped: list[str] = field(default_factory=list)

    def agreement(self) -> str:
        """Whether the answers are the same text, and where the first that differs departs."""
        texts = {route: a.text for route, a in self.answers.items()}
        if len(texts) < 2:
            return "Only one route answered."
        if len(set(texts.values())) == 1:
            return f"The {len(texts)} answers are identical."
        reference = texts.get("peft", next(iter(texts.values())))
        parts = []
        for route, text in texts.items():
            if text is reference or route == "peft":
                continue
            same = next(
                (i for i, (a, b) in enumerate(zip(text, reference, strict=False)) if a != b),
                min(len(text), len(reference)),
            )
            verdict = "identical" if text == reference else f"the same for {same} characters"
            parts.append(f"{ROUTES[route].split(' (')[0]}: {verdict}")
        return "Against PEFT's answer: " + "; ".join(parts) + "."

    def table_report(self) -> EvalReport | None:
        """One eval report for the table: the base and merged columns, then base + adapter."""
        if self.report is None:
            return None
        labels = [COLUMNS["base"], COLUMNS["merged"]]
        models = [
            dataclasses.replace(m, name=n) for m, n in zip(self.report.models, labels, strict=True)
        ]
        if self.adapter_report is not None:
            models += [  # a run of its own: nothing in it is paired with the base
                dataclasses.replace(m, name=COLUMNS["adapter"], is_baseline=False)
                for m in self.adapter_report.models
            ]
        return dataclasses.replace(self.report, models=models)

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": str(self.adapter_dir),
            "base_f16": str(self.base_f16),
            "merged": str(self.merged),
            "adapter_gguf": str(self.adapter_gguf) if self.adapter_gguf else None,
            "prompt": self.prompt,
            "answers": {route: a.to_json() for route, a in self.answers.items()},
            "agreement": self.agreement(),
            "verify": {route: c.to_json() for route, c in self.checks.items()},
            "eval": self.report.to_json() if self.report else None,
            "adapter_eval": self.adapter_report.to_json() if self.adapter_report else None,
            "skipped": self.skipped,
        }


def _quoted(text: str) -> list[str]:
    return [f"    {line}" for line in text.strip().splitlines()[:6]]


def lora_markdown(run: LoraRun) -> list[str]:
    """The section's lines: the answers, the verify numbers and the eval table."""
    from ggufkit.evaluate.report import eval_table

    lines = [f"## {BASE} + a LoRA adapter ({ADAPTER}: r 8, trained on Paradise Lost)", ""]
    tokens = max((a.tokens for a in run.answers.values()), default=0)
    lines += [f"The same prompt, greedy ({tokens} tokens at most), three ways:", ""]
    for route, answer in run.answers.items():
        command = f": `{shown(answer.command)}`" if answer.command else ""
        lines += [f"{ROUTES[route]}{command}", "", *_quoted(run.prompt + answer.text), ""]
    lines += [run.agreement(), ""]
    if run.checks:
        lines += ["| against PEFT (verify) | max \\|Δlogit\\| / max \\|logit\\| | top token |"]
        lines += ["|---|--:|--:|"]
        for route, check in run.checks.items():
            verdict = "PASS" if check.passed else "FAIL"
            lines.append(
                f"| {ROUTES[route]} | {100 * check.rel_diff:.3f}% "
                f"(limit {100 * (check.limit or 0):g}%, {verdict}) "
                f"| {100 * check.argmax_agreement:.1f}% of {check.positions} |"
            )
        lines.append("")
    table = run.table_report()
    if table is not None:
        lines += [eval_table(table), ""]
        if run.adapter_gguf is not None and run.adapter_gguf.is_file():
            size = run.adapter_gguf.stat().st_size / 2**20
            lines += [
                f"{COLUMNS['adapter']}: a run of its own with the adapter GGUF "
                f"({run.adapter_gguf.name}, {size:.2f} MiB more to ship) applied by llama.cpp; "
                "its interval is not paired with the base's.",
                "",
            ]
    lines += [f"Skipped: {note}." for note in run.skipped]
    return lines


def where_rows(run: LoraRun) -> list[tuple[str, str]]:
    """``where``'s rows for the section's files."""
    rows = [(run.merged.name, f"{BASE} with {ADAPTER} merged while converting")]
    if run.adapter_gguf is not None:
        rows.append((run.adapter_gguf.name, f"{ADAPTER} as llama.cpp's adapter (--lora)"))
    evals = [p.name for p in (run.eval_json, run.adapter_eval_json) if p is not None]
    if evals:
        rows.append((_braced(evals), "the adapter's eval (base, merged, base + adapter GGUF)"))
    if run.checks:
        checks = [c.json.name for c in run.checks.values()]
        rows.append((_braced(checks), "verify against PEFT (adapter GGUF, merged GGUF)"))
    return rows


def _braced(names: list[str]) -> str:
    """``stem-{a,b}.json`` for names that share a stem and a suffix."""
    if len(names) < 2:
        return ", ".join(names)
    stem = names[0].rsplit("-", 1)[0] + "-"
    suffix = ".json"
    if not all(n.startswith(stem) and n.endswith(suffix) for n in names):
        return ", ".join(names)
    parts = ",".join(n[len(stem) : -len(suffix)] for n in names)
    return f"{stem}{{{parts}}}{suffix}"
