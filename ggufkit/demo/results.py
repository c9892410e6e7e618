"""The demo's models and settings, its result, and that result as JSON and as text."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.demo.lora import LoraRun, lora_markdown, where_rows
from ggufkit.demo.vision import VisionRun, vision_markdown
from ggufkit.demo.vision import where_rows as vision_where_rows

if TYPE_CHECKING:
    from ggufkit.compare import Comparison
    from ggufkit.evaluate import EvalReport
    from ggufkit.workspace import StepResult

SCHEMA = "ggufkit.demo/1"
DEFAULT_OUTDIR = Path("ggufkit-demo")
TYPES = ("q8_0", "q4_0", "q4_k_m")
SAMPLE_TYPE = "Q4_0"
BNB_MODEL = "tiny-llama"
PLOT_MODULES = ("matplotlib",)
BNB_MODULES = ("torch", "transformers", "accelerate", "bitsandbytes")


@dataclass(frozen=True)
class DemoModel:
    name: str  # the output files' stem
    source: str  # the embedded model (ggufkit.data)
    base: str | None  # the embedded model a delta source is added to
    prompt: str  # for the sample generation
    about: str
    corpus: str = "heldout.txt"  # the embedded text it is evaluated on (ggufkit.data)


MODELS = (
    DemoModel("tiny-llama", "tiny-llama", None, "KING.\nMy lords,", "LLaMA, Shakespeare"),
    DemoModel(
        "tiny-llama-milton",
        "tiny-llama-milton-delta",
        "tiny-llama",
        "So spake the Angel, and",
        "LLaMA + the Milton delta, merged while converting",
        "heldout-milton.txt",  # Paradise Regained: what the delta learned, held out
    ),
    DemoModel("tiny-bloom", "tiny-bloom", None, "QUEEN.\nGood my lord,", "BLOOM, Shakespeare"),
)


@dataclass(frozen=True)
class DemoSettings:
    """Small enough for a quick run on 2 cores, large enough that Q4_0's cost shows."""

    ctx: int = 256  # perplexity context (tokens per chunk), for llama.cpp and bitsandbytes alike
    chunks: int = 16  # 16 x 127 scored tokens per file: two llama-perplexity passes
    # eval --target-error: paired 95 % intervals; every type scores all 16 chunks (min_chunks
    # = chunks), so the GGUF rows stay on the same chunks as the bitsandbytes ones
    target_error: float = 0.01
    bench_prompt: int = 64  # llama-bench
    bench_gen: int = 16
    bench_reps: int = 2
    bnb_modes: tuple[str, ...] = ("nf4", "int8")  # the counterparts of Q4_0 and Q8_0
    bnb_runs: int = 1
    bnb_tokens: int = 16
    sample_tokens: int = 48
    answer_tokens: int = 32  # the LoRA section's greedy answers
    temperature: float = 0.8
    seed: int = 0


@dataclass
class Sample:
    model: Path
    prompt: str
    text: str
    tokens: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "model": str(self.model)}


@dataclass
class ModelRun:
    """One family: its GGUF files by type label (F16, Q8_0, ...), its eval and its sample."""

    name: str
    about: str
    files: dict[str, Path]
    eval_json: Path
    report: EvalReport
    plot: Path | None = None
    sample: Sample | None = None

    def ppl_change(self) -> dict[str, float]:
        """Each quantized type's perplexity relative to F16's (0.01 = 1% higher)."""
        by_type = {m.type: m.ppl for m in self.report.models if m.ppl}
        base = by_type.get("F16")
        return {t: p / base - 1 for t, p in by_type.items() if base and t != "F16"}


@dataclass
class DemoResult:
    outdir: Path
    settings: DemoSettings
    models: list[ModelRun] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    bnb_json: Path | None = None
    comparison: Comparison | None = None
    compare_plot: Path | None = None
    lora: LoraRun | None = None  # the embedded LoRA adapter three ways (ggufkit.demo.lora)
    vision: VisionRun | None = None  # one image question, both paths (ggufkit.demo.vision)
    skipped: list[str] = field(default_factory=list)  # parts left out, and why
    seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.outdir / "manifest.json"

    @property
    def results_md(self) -> Path:
        return self.outdir / "results.md"

    @property
    def results_json(self) -> Path:
        return self.outdir / "results.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "outdir": str(self.outdir),
            "settings": asdict(self.settings),
            "seconds": round(self.seconds, 2),
            "models": {
                run.name: {
                    "about": run.about,
                    "files": {label: str(path) for label, path in run.files.items()},
                    "ppl_change_vs_f16": run.ppl_change(),
                    "eval": run.report.to_json(),
                    "plot": str(run.plot) if run.plot else None,
                    "sample": run.sample.to_json() if run.sample else None,
                }
                for run in self.models
            },
            "bnb": str(self.bnb_json) if self.bnb_json else None,
            "comparison": self.comparison.to_json() if self.comparison else None,
            "compare_plot": str(self.compare_plot) if self.compare_plot else None,
            "lora": self.lora.to_json() if self.lora else None,
            "vision": self.vision.to_json() if self.vision else None,
            "skipped": self.skipped,
            "steps": [step.to_json() for step in self.steps],
        }


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    absolute = path.absolute()
    cwd = Path.cwd()
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(absolute)


def _percent(value: float) -> str:
    return f"{100 * value:+.2f}%"


def _change_text(run: ModelRun, type_: str, change: float) -> str:
    """``Q4_0 +0.22% ± 0.35%`` with the paired 95 % interval where the eval has one, and a word
    when it covers 0 (a quantized file is not better than its f16 by noise)."""
    model = next((m for m in run.report.models if m.type == type_), None)
    base = run.report.baseline_result
    if model is None or base is None or not base.ppl or model.delta_ppl_ci is None:
        return f"{type_} {_percent(change)}"
    half = model.delta_ppl_ci / base.ppl
    same = " (no measurable change)" if abs(change) <= half else ""
    return f"{type_} {_percent(change)} ± {100 * half:.2f}%{same}"


def markdown(result: DemoResult) -> str:
    """The tables: one eval table per model, then bitsandbytes beside GGUF; and the samples."""
    from ggufkit.compare import comparison_table
    from ggufkit.evaluate.report import eval_table

    lines = [f"# ggufkit demo ({len(result.models)} models, {_shown(result.outdir)})", ""]
    lines += [f"## Samples ({SAMPLE_TYPE}, seed {result.settings.seed})", ""]
    for run in result.models:
        if run.sample is None:
            continue
        text = (run.sample.prompt + run.sample.text).strip().splitlines()[:6]
        lines += [f"{run.sample.model.name}:", "", *(f"    {line}" for line in text), ""]
    for run in result.models:
        change = ", ".join(_change_text(run, t, v) for t, v in run.ppl_change().items())
        lines += [f"## {run.name} ({run.about})", "", eval_table(run.report), ""]
        if run.plot is not None:  # results.md sits beside the plots
            lines += [f"![{run.name}: ΔPPL, KL-divergence and speed by file size]({run.plot.name})"]
            lines += [""]
        lines += [f"Perplexity against F16 (± a paired 95 % interval): {change}.", ""]
    if result.lora is not None:
        lines += lora_markdown(result.lora)
    if result.vision is not None:
        lines += vision_markdown(result.vision)
    if result.comparison is not None:
        lines += [f"## bitsandbytes beside GGUF ({BNB_MODEL})", ""]
        lines += [comparison_table(result.comparison), ""]
        if result.compare_plot is not None:
            lines += [f"![GGUF beside bitsandbytes]({result.compare_plot.name})", ""]
    lines += [f"Skipped: {note}." for note in result.skipped]
    return "\n".join(lines).rstrip() + "\n"


def where(result: DemoResult) -> str:
    """Where everything is, what this run built or reused, and what to try next."""
    built = sum(not s.skipped for s in result.steps)
    rows = [
        ("manifest.json", "how each file was made: inputs (sha256), options, tools, eval results"),
        ("results.md, results.json", "the samples and tables below, and the settings"),
    ]
    for run in result.models:
        labels = ",".join(p.name.removeprefix(f"{run.name}-")[:-5] for p in run.files.values())
        rows.append((f"{run.name}-{{{labels}}}.gguf", f"{run.about}: f16, then quantized"))
        plot = f", {run.plot.name}" if run.plot else ""
        rows.append((f"{run.eval_json.name}{plot}", f"{run.name}'s eval table"))
    if result.lora is not None:
        rows += where_rows(result.lora)
    if result.vision is not None:
        rows += vision_where_rows(result.vision)
    if result.bnb_json is not None:
        plot = f", {result.compare_plot.name}" if result.compare_plot else ""
        rows.append((f"{result.bnb_json.name}{plot}", "bitsandbytes, and beside GGUF"))
    width = max(len(name) for name, _ in rows)
    sample = next((r for r in result.models if r.sample and "\n" not in r.sample.prompt), None)
    lines = [
        f"ggufkit demo: done in {result.seconds:.1f} s ({built} steps run, "
        f"{len(result.steps) - built} up to date and reused); in {_shown(result.outdir)}/:",
        *(f"  {name:<{width}}  {what}" for name, what in rows),
    ]
    if sample is not None and sample.sample is not None:
        prompt = shlex.quote(sample.sample.prompt)
        lines.append(f"Try: ggufkit run {_shown(sample.files[SAMPLE_TYPE])} -p {prompt}")
    return "\n".join(lines)
