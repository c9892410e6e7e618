"""``run_demo``: each step through the workspace step runner, into one directory."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.cmdline import command_line
from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import locked, write_json_atomic, write_text_atomic
from ggufkit.core.log import get_logger
from ggufkit.data import embedded_text
from ggufkit.demo.lora import BASE as LORA_BASE
from ggufkit.demo.lora_run import run_lora
from ggufkit.demo.results import (
    BNB_MODEL,
    BNB_MODULES,
    DEFAULT_OUTDIR,
    MODELS,
    PLOT_MODULES,
    SAMPLE_TYPE,
    TYPES,
    DemoModel,
    DemoResult,
    DemoSettings,
    ModelRun,
    Sample,
    markdown,
)
from ggufkit.demo.vision import run_vision
from ggufkit.workspace import StepResult, Workspace, WorkspaceConfig
from ggufkit.workspace.manifest import file_input

if TYPE_CHECKING:
    from ggufkit.evaluate import EvalReport

log = get_logger("demo")


def _missing(modules: Sequence[str]) -> list[str]:
    """Those of ``modules`` that are not installed."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


class _Demo:
    def __init__(
        self, outdir: Path, settings: DemoSettings, threads: int | None, force: bool, speed: bool
    ) -> None:
        from ggufkit.data import default_corpus

        self.outdir, self.settings, self.threads = outdir, settings, threads
        self.force, self.speed = force, speed
        self.corpus = default_corpus()  # the bitsandbytes comparison's, as tiny-llama's
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
        action: Callable[[], object],
        command: list[str],
        inputs: Sequence[Mapping[str, Any]],
        **options: Any,
    ) -> StepResult:
        """Run ``action`` unless the manifest shows ``output`` made from these inputs (by sha256)
        with these options; ``command`` is the ggufkit command line that does the same."""
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
        corpus = embedded_text(model.corpus)
        log.info("demo: %s: evaluate %s on %s", model.name, ", ".join(files), corpus.name)
        report = self.evaluate(workspace, model.name, files, corpus, eval_json)
        run = ModelRun(model.name, model.about, files, eval_json, report)
        if not _missing(PLOT_MODULES):
            from ggufkit.evaluate.report import plot_eval

            png = eval_json.with_suffix(".png")
            command = self.eval_command(workspace, files, corpus, plot=Path(png.name))
            inputs = [file_input(eval_json, role="eval")]
            self.step(workspace, "plot", png, lambda: plot_eval(report, png), command, inputs)
            run.plot = png
        log.info("demo: %s: generate from %s", model.name, files[SAMPLE_TYPE].name)
        run.sample = self.generate(files[SAMPLE_TYPE], model.prompt)
        return run

    def eval_values(self) -> dict[str, Any]:
        """The ``ggufkit eval`` parameter values of the demo's settings."""
        s = self.settings
        values: dict[str, Any] = {"ctx": s.ctx, "chunks": s.chunks, "speed": self.speed}
        values |= {"target_error": f"{100 * s.target_error:g}%", "min_chunks": s.chunks}
        if self.speed:
            values |= {"prompt_tokens": s.bench_prompt, "gen_tokens": s.bench_gen}
            values |= {"repetitions": s.bench_reps}
        return values

    def eval_flags(self) -> list[str]:
        """The ``ggufkit eval`` options of the demo's settings (rendered as the CLI spells them)."""
        return command_line("eval", **self.eval_values())[2:]

    def eval_command(
        self, workspace: Workspace, files: dict[str, Path], corpus: Path, **more: Any
    ) -> list[str]:
        """The ``ggufkit eval`` command line that measures what the demo's eval step does."""
        models = tuple(Path(workspace.relative(p)) for p in files.values())
        corpus_value = corpus if corpus != self.corpus else None
        values = self.eval_values() | more
        return command_line("eval", models=models, corpus=corpus_value, **values)

    def evaluate(
        self, workspace: Workspace, name: str, files: dict[str, Path], corpus: Path, out: Path
    ) -> EvalReport:
        from ggufkit.compare import read_report
        from ggufkit.evaluate import EvalReport, evaluate
        from ggufkit.workspace.evals import record_results
        from ggufkit.workspace.manifest import Manifest

        s = self.settings
        made: list[EvalReport] = []

        def action() -> None:
            report = evaluate(
                list(files.values()),
                corpus=corpus,
                ctx=s.ctx,
                chunks=s.chunks,
                threads=self.threads,
                speed=self.speed,
                n_prompt=s.bench_prompt,
                n_gen=s.bench_gen,
                repetitions=s.bench_reps,
                tmp_dir=self.outdir,
                target_error=s.target_error,
                min_chunks=s.chunks,
            )
            for measured in report.models:
                measured.model = name  # the merged model, not the delta it was converted from
            write_json_atomic(out, report.to_json())
            made.append(report)

        command = self.eval_command(workspace, files, corpus)
        inputs = [file_input(p, role=label) for label, p in files.items()]
        inputs.append(file_input(corpus, role="corpus"))
        flags = self.eval_flags()  # the corpus is an input (by sha256), not an option
        self.step(
            workspace, "eval", out, action, command, inputs, flags=flags, threads=self.threads
        )
        if made:
            record_results(made[0], workspace)
            return made[0]
        report = EvalReport.from_json(read_report(out, "eval"))
        # A file rebuilt with the same bytes has a fresh record: give it its results again.
        manifest = Manifest.load(workspace.manifest_path)
        if any("eval" not in (manifest.get(p) or {}) for p in files.values()):
            record_results(report, workspace)
        return report

    def generate(self, model: Path, prompt: str) -> Sample:
        from ggufkit.inference.generate import generate
        from ggufkit.inference.sampling import Sampling

        s = self.settings
        sampling = Sampling(max_tokens=s.sample_tokens, temperature=s.temperature, seed=s.seed)
        done = generate(model, prompt, sampling, threads=self.threads)
        return Sample(model, prompt, done.text, done.tokens, done.seconds)

    def bnb(self, gguf_eval: Path) -> None:
        from ggufkit.bnb import BnbOptions, BnbReport, parse_modes, run_bnb
        from ggufkit.compare import compare, plot_comparison
        from ggufkit.data import embedded_model
        from ggufkit.hub import resolve_model
        from ggufkit.workspace.bnb import summary
        from ggufkit.workspace.manifest import model_input, record_eval

        s = self.settings
        model = next(m for m in MODELS if m.name == BNB_MODEL)
        workspace = self.workspace(model)
        resolved = resolve_model(embedded_model(model.source))
        out = self.outdir / f"{model.name}-bnb.json"
        values = {"modes": ",".join(s.bnb_modes), "repetitions": s.bnb_runs, "ctx": s.ctx}
        values |= {"max_new_tokens": s.bnb_tokens, "chunks": s.chunks, "seed": s.seed}
        flags = command_line("bnb", prompt=(model.prompt,), **values)[2:]
        made: list[BnbReport] = []

        def action() -> None:
            options = BnbOptions(
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
            report = run_bnb(resolved, options)
            write_json_atomic(out, report.to_json())
            made.append(report)

        log.info("demo: %s: bitsandbytes %s beside GGUF", model.name, ", ".join(s.bnb_modes))
        command = command_line("bnb", model=str(resolved.path), prompt=(model.prompt,), **values)
        inputs = [model_input(resolved), file_input(self.corpus, role="corpus")]
        self.step(workspace, "bnb", out, action, command, inputs, flags=flags)
        if made:
            record_eval(workspace.manifest_path, out, summary(made[0]))
        self.result.bnb_json = out
        comparison = self.result.comparison = compare(gguf_eval, out)
        if not _missing(PLOT_MODULES):
            png = self.outdir / "compare.png"
            command = command_line(
                "compare",
                eval_file=Path(gguf_eval.name),
                bnb_file=Path(out.name),
                plot=Path(png.name),
            )
            inputs = [file_input(gguf_eval, role="eval"), file_input(out, role="bnb")]
            self.step(
                workspace, "plot", png, lambda: plot_comparison(comparison, png), command, inputs
            )
            self.result.compare_plot = png


def run_demo(
    outdir: str | Path = DEFAULT_OUTDIR,
    *,
    bnb: bool = True,
    speed: bool = True,
    threads: int | None = None,
    force: bool = False,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Run the whole pipeline on the embedded models into ``outdir`` (see :mod:`ggufkit.demo`).

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
        base = next(run for run in result.models if run.name == LORA_BASE)
        result.lora = run_lora(demo, base.files["F16"])
        if _missing(PLOT_MODULES):
            result.skipped.append(
                "plots: matplotlib is not installed (pip install 'ggufkit[plot]')"
            )
        missing = _missing(BNB_MODULES)
        if not bnb:
            result.skipped.append("bitsandbytes comparison: --no-bnb")
        elif missing:
            result.skipped.append(
                f"bitsandbytes comparison: {', '.join(missing)} not installed "
                "(pip install 'ggufkit[bnb]')"
            )
        else:
            demo.bnb(result.models[0].eval_json)
        if bnb:
            result.vision = run_vision(demo)
            result.skipped += result.vision.skipped
        else:
            result.skipped.append("the image question through both paths: --no-bnb")
        for note in result.skipped:
            log.warning("demo: skipped %s", note)
        result.seconds = time.perf_counter() - started
        write_text_atomic(result.results_md, markdown(result))
        write_json_atomic(result.results_json, result.to_json())
    return result
