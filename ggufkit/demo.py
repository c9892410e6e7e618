"""``ggufkit demo``: the whole pipeline, offline, on the tiny models shipped inside ggufkit.

Convert tiny-llama, tiny-llama-milton (its delta merged on the fly) and tiny-bloom to f16, quantize
each to q8_0, q4_0 and q4_k_m, evaluate every file on held-out text, put bitsandbytes beside GGUF
on tiny-llama, and generate a few lines from each q4_0 file. Everything lands in one directory
with a provenance ``manifest.json``; each step runs through the workspace step runner, so a step
whose inputs (by sha256) and options are unchanged is skipped on the next run.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.errors import UsageError
from ggufkit.fsutil import locked, write_json_atomic, write_text_atomic
from ggufkit.log import get_logger
from ggufkit.manifest import file_input
from ggufkit.workspace import StepResult, Workspace, WorkspaceConfig

if TYPE_CHECKING:
    from ggufkit.compare import Comparison
    from ggufkit.evaluate import EvalReport

log = get_logger("demo")

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


MODELS = (
    DemoModel("tiny-llama", "tiny-llama", None, "KING.\nMy lords,", "LLaMA, Shakespeare"),
    DemoModel(
        "tiny-llama-milton",
        "tiny-llama-milton-delta",
        "tiny-llama",
        "So spake the Angel, and",
        "LLaMA + the Milton delta, merged while converting",
    ),
    DemoModel("tiny-bloom", "tiny-bloom", None, "QUEEN.\nGood my lord,", "BLOOM, Shakespeare"),
)


@dataclass(frozen=True)
class DemoSettings:
    """Small enough for a quick run on 2 cores, large enough that Q4_0's cost shows."""

    ctx: int = 256  # perplexity context (tokens per chunk), for llama.cpp and bitsandbytes alike
    chunks: int = 16  # 16 x 127 scored tokens per file: two llama-perplexity passes
    bench_prompt: int = 64  # llama-bench
    bench_gen: int = 16
    bench_reps: int = 2
    bnb_modes: tuple[str, ...] = ("nf4", "int8")  # the counterparts of Q4_0 and Q8_0
    bnb_runs: int = 1
    bnb_tokens: int = 16
    sample_tokens: int = 48
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
            "skipped": self.skipped,
            "steps": [step.to_json() for step in self.steps],
        }


def _missing(modules: Sequence[str]) -> list[str]:
    """Those of ``modules`` that are not installed."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


class _Demo:
    def __init__(
        self, outdir: Path, settings: DemoSettings, threads: int | None, force: bool, speed: bool
    ) -> None:
        from ggufkit.data import default_corpus

        self.outdir = outdir
        self.settings = settings
        self.threads = threads
        self.force = force
        self.speed = speed
        self.corpus = default_corpus()
        self.result = DemoResult(outdir, settings)

    def workspace(self, model: DemoModel) -> Workspace:
        from ggufkit.data import embedded_model

        config = WorkspaceConfig(
            source=str(embedded_model(model.source)),
            name=model.name,
            delta_base=str(embedded_model(model.base)) if model.base else None,
            outdir=".",
            types=list(TYPES),
        )
        return Workspace(self.outdir, config)

    def step(
        self,
        workspace: Workspace,
        step: str,
        output: Path,
        inputs: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
        command: Sequence[str],
        action: Callable[[], object],
    ) -> StepResult:
        done = workspace.run_step(
            step,
            output,
            inputs=inputs,
            options=options,
            command=command,
            action=action,
            force=self.force,
        )
        self.result.steps.append(done)
        return done

    def build(self, model: DemoModel) -> ModelRun:
        workspace = self.workspace(model)
        how = f" (merging {model.source} into {model.base})" if model.base else ""
        log.info("demo: %s: convert to f16%s, quantize to %s", model.name, how, ", ".join(TYPES))
        self.result.steps.append(workspace.convert(force=self.force, threads=self.threads))
        self.result.steps += workspace.quantize(list(TYPES), force=self.force)
        files = {"F16": workspace.f16_path}
        files.update({t.upper(): workspace.quantized_path(t) for t in TYPES})
        eval_json = self.outdir / f"{model.name}-eval.json"
        log.info("demo: %s: evaluate %s on %s", model.name, ", ".join(files), self.corpus.name)
        report = self.evaluate(workspace, model.name, files, eval_json)
        run = ModelRun(model.name, model.about, files, eval_json, report)
        if not _missing(PLOT_MODULES):
            run.plot = self.plot_eval(workspace, run)
        log.info("demo: %s: generate from %s", model.name, files[SAMPLE_TYPE].name)
        run.sample = self.generate(files[SAMPLE_TYPE], model.prompt)
        return run

    def evaluate(
        self, workspace: Workspace, name: str, files: dict[str, Path], out: Path
    ) -> EvalReport:
        from ggufkit.evaluate import EvalReport, evaluate
        from ggufkit.evaluate.pipeline import record_results

        s = self.settings
        options: dict[str, Any] = {"ctx": s.ctx, "chunks": s.chunks, "speed": self.speed}
        if self.speed:
            options.update(
                bench_prompt=s.bench_prompt,
                bench_gen=s.bench_gen,
                bench_reps=s.bench_reps,
                threads=self.threads,
            )
        names = [workspace.relative(p) for p in files.values()]
        command = ["ggufkit", "eval", *names, "--ctx", str(s.ctx), "--chunks", str(s.chunks)]
        if self.speed:
            command += ["--bench-prompt", str(s.bench_prompt), "--bench-gen", str(s.bench_gen)]
            command += ["--bench-reps", str(s.bench_reps)]
        else:
            command.append("--no-speed")
        made: list[EvalReport] = []

        def action() -> None:
            report = evaluate(
                list(files.values()),
                corpus=self.corpus,
                ctx=s.ctx,
                chunks=s.chunks,
                threads=self.threads,
                speed=self.speed,
                n_prompt=s.bench_prompt,
                n_gen=s.bench_gen,
                repetitions=s.bench_reps,
                tmp_dir=self.outdir,
            )
            for measured in report.models:
                measured.model = name  # the merged model, not the delta it was converted from
            write_json_atomic(out, report.to_json())
            made.append(report)

        inputs = [file_input(p, role=label) for label, p in files.items()]
        inputs.append(file_input(self.corpus, role="corpus"))
        self.step(workspace, "eval", out, inputs, options, command, action)
        if made:
            record_results(made[0], workspace)
            return made[0]
        from ggufkit.compare import read_json

        return EvalReport.from_json(read_json(out, "eval"))

    def plot_eval(self, workspace: Workspace, run: ModelRun) -> Path:
        from ggufkit.report import plot_eval

        out = self.outdir / f"{run.name}-eval.png"
        command = ["ggufkit", "eval", "...", "--plot", out.name]
        self.step(
            workspace,
            "plot",
            out,
            [file_input(run.eval_json, role="eval")],
            {},
            command,
            lambda: plot_eval(run.report, out),
        )
        return out

    def generate(self, model: Path, prompt: str) -> Sample:
        from ggufkit.generate import generate

        s = self.settings
        done = generate(
            model,
            prompt,
            max_tokens=s.sample_tokens,
            temperature=s.temperature,
            seed=s.seed,
            threads=self.threads,
        )
        return Sample(model, prompt, done.text, done.tokens, done.seconds)

    def bnb(self, gguf_eval: Path) -> None:
        from ggufkit.bnb import BnbOptions, BnbReport, parse_modes, run_bnb
        from ggufkit.bnb.workspace import summary
        from ggufkit.compare import compare
        from ggufkit.data import embedded_model
        from ggufkit.hub import resolve_model
        from ggufkit.manifest import model_input, record_eval

        s = self.settings
        model = next(m for m in MODELS if m.name == BNB_MODEL)
        workspace = self.workspace(model)
        resolved = resolve_model(embedded_model(model.source))
        out = self.outdir / f"{model.name}-bnb.json"
        bnb_options = BnbOptions(
            modes=parse_modes(",".join(s.bnb_modes)),
            prompts=[model.prompt],
            runs=s.bnb_runs,
            max_new_tokens=s.bnb_tokens,
            corpus=self.corpus,
            ctx=s.ctx,
            chunks=s.chunks,
            seed=s.seed,
            threads=self.threads,
            tmp_dir=self.outdir,
        )
        modes = [m.name for m in bnb_options.modes]
        options = {
            "modes": modes,
            "runs": s.bnb_runs,
            "max_new_tokens": s.bnb_tokens,
            "ctx": s.ctx,
            "chunks": s.chunks,
            "seed": s.seed,
            "prompt": model.prompt,
        }
        command = ["ggufkit", "bnb", str(resolved.path), "--modes", ",".join(modes)]
        command += ["--runs", str(s.bnb_runs), "--max-new-tokens", str(s.bnb_tokens)]
        command += ["--ctx", str(s.ctx), "--chunks", str(s.chunks), "--prompt", model.prompt]
        made: list[BnbReport] = []

        def action() -> None:
            report = run_bnb(resolved, bnb_options)
            write_json_atomic(out, report.to_json())
            made.append(report)

        log.info("demo: %s: bitsandbytes %s beside the GGUF files", model.name, ", ".join(modes))
        inputs = [model_input(resolved), file_input(self.corpus, role="corpus")]
        self.step(workspace, "bnb", out, inputs, options, command, action)
        if made:
            record_eval(workspace.manifest_path, out, summary(made[0]))
        self.result.bnb_json = out
        comparison = self.result.comparison = compare(gguf_eval, out)
        if not _missing(PLOT_MODULES):
            self.result.compare_plot = self.plot_compare(workspace, comparison, gguf_eval, out)

    def plot_compare(
        self, workspace: Workspace, comparison: Comparison, gguf_eval: Path, bnb_json: Path
    ) -> Path:
        from ggufkit.compare import plot_comparison

        out = self.outdir / "compare.png"
        inputs = [file_input(gguf_eval, role="eval"), file_input(bnb_json, role="bnb")]
        command = ["ggufkit", "compare", gguf_eval.name, bnb_json.name, "--plot", out.name]
        self.step(
            workspace, "plot", out, inputs, {}, command, lambda: plot_comparison(comparison, out)
        )
        return out


def run_demo(
    outdir: str | Path = DEFAULT_OUTDIR,
    *,
    bnb: bool = True,
    speed: bool = True,
    threads: int | None = None,
    force: bool = False,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Run the whole pipeline on the embedded models into ``outdir``; see the module docstring.

    ``bnb``: also measure bitsandbytes on tiny-llama (skipped with a note when torch,
    transformers, accelerate or bitsandbytes is not installed). ``speed``: run llama-bench.
    ``force``: redo every step, even those whose outputs are up to date.
    """
    from ggufkit.llamacpp.bindings import load_llama_cpp
    from ggufkit.llamacpp.build import current_build

    started = time.perf_counter()
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    outdir = Path(outdir).absolute()
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir} is a file, not a directory", hint="choose another --outdir")
    current_build()  # no llama.cpp: say `ggufkit build` before converting anything
    load_llama_cpp()
    outdir.mkdir(parents=True, exist_ok=True)
    with locked(outdir / ".ggufkit-demo.lock", what=f"the demo directory {outdir}", timeout=0):
        demo = _Demo(outdir, settings or DemoSettings(), threads, force, speed)
        result = demo.result
        for model in MODELS:
            result.models.append(demo.build(model))
        missing = _missing(PLOT_MODULES)
        if missing:
            result.skipped.append(
                "plots: matplotlib is not installed (pip install 'ggufkit[plot]')"
            )
        missing = _missing(BNB_MODULES) if bnb else []
        if not bnb:
            result.skipped.append("bitsandbytes comparison: --no-bnb")
        elif missing:
            result.skipped.append(
                f"bitsandbytes comparison: {', '.join(missing)} not installed "
                "(pip install 'ggufkit[bnb]')"
            )
        else:
            demo.bnb(result.models[0].eval_json)
        for note in result.skipped:
            log.warning("demo: skipped %s", note)
        result.seconds = time.perf_counter() - started
        write_text_atomic(result.results_md, markdown(result))
        write_json_atomic(result.results_json, result.to_json())
    return result


# --- text -----------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    absolute = path.absolute()
    cwd = Path.cwd()
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(absolute)


def _percent(value: float) -> str:
    return f"{100 * value:+.2f}%"


def markdown(result: DemoResult) -> str:
    """The tables: one eval table per model, then bitsandbytes beside GGUF; and the samples."""
    from ggufkit.compare import comparison_table
    from ggufkit.report import eval_table

    lines = [f"# ggufkit demo ({len(result.models)} models, {_shown(result.outdir)})", ""]
    lines += [f"## Samples ({SAMPLE_TYPE}, seed {result.settings.seed})", ""]
    for run in result.models:
        if run.sample is None:
            continue
        text = (run.sample.prompt + run.sample.text).strip().splitlines()[:6]
        lines += [f"{run.sample.model.name}:", "", *(f"    {line}" for line in text), ""]
    for run in result.models:
        change = ", ".join(f"{t} {_percent(v)}" for t, v in run.ppl_change().items())
        lines += [f"## {run.name} ({run.about})", "", eval_table(run.report), ""]
        lines += [f"Perplexity against F16: {change}.", ""]
    if result.comparison is not None:
        lines += [f"## bitsandbytes beside GGUF ({BNB_MODEL})", ""]
        lines += [comparison_table(result.comparison), ""]
    lines += [f"Skipped: {note}." for note in result.skipped]
    return "\n".join(lines).rstrip() + "\n"


def where(result: DemoResult) -> str:
    """Where everything is, and what this run built or reused."""
    built = [s for s in result.steps if not s.skipped]
    lines = [
        f"ggufkit demo: done in {result.seconds:.1f} s "
        f"({len(built)} steps run, {len(result.steps) - len(built)} up to date and reused)",
        f"  {_shown(result.outdir)}/",
        "    manifest.json      how each file was made: inputs and sha256, options, tool versions, "
        "eval results",
        "    results.md/.json   the tables below, the samples and the settings",
    ]
    for run in result.models:
        names = ", ".join(p.name for p in run.files.values())
        lines.append(f"    {run.name}: {names}")
        extra = [run.eval_json.name, *([run.plot.name] if run.plot else [])]
        lines.append(f"    {' ' * len(run.name)}  {', '.join(extra)}")
    if result.bnb_json is not None:
        plot = f", {result.compare_plot.name}" if result.compare_plot else ""
        lines.append(f"    bitsandbytes: {result.bnb_json.name}{plot}")
    return "\n".join(lines)
