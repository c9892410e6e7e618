"""The demo's LoRA steps (see :mod:`ggufkit.demo.lora`), through the workspace step runner."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ggufkit.core.cmdline import command_line
from ggufkit.core.fsutil import write_json_atomic
from ggufkit.core.log import get_logger
from ggufkit.demo.lora import (
    ADAPTER,
    ADAPTER_MODULES,
    BASE,
    CORPUS,
    MERGED,
    PEFT_MODULES,
    PROMPT,
    Answer,
    Check,
    LoraRun,
)
from ggufkit.demo.results import TYPES, DemoResult, DemoSettings
from ggufkit.workspace import StepResult, Workspace, WorkspaceConfig
from ggufkit.workspace.manifest import file_input

if TYPE_CHECKING:
    from ggufkit.evaluate import EvalReport

log = get_logger("demo")


class Demo(Protocol):  # what of ggufkit.demo.pipeline's runner the LoRA steps use
    outdir: Path
    settings: DemoSettings
    threads: int | None
    force: bool
    result: DemoResult

    def step(self, *args: Any, **options: Any) -> StepResult:
        """(workspace, step, output, action, command, inputs, **options): one recorded step."""
        ...


def _missing(modules: Sequence[str]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def write_peft_answer(
    base_dir: str | Path, adapter_dir: str | Path, prompt: str, max_tokens: int, out: str | Path
) -> Answer:
    """PEFT's greedy continuation of ``prompt`` (base + adapter in transformers, fp32, unmerged),
    written to ``out`` as JSON."""
    import torch
    import transformers
    from peft import PeftModel

    transformers.utils.logging.disable_progress_bar()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        done = peft_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
    new = [int(i) for i in done[0, ids.shape[1] :] if int(i) != tokenizer.eos_token_id]
    whole = str(tokenizer.decode(done[0], skip_special_tokens=True))
    text = whole[len(prompt) :] if whole.startswith(prompt) else str(tokenizer.decode(new))
    answer = Answer("peft", text, len(new))
    write_json_atomic(Path(out), answer.to_json())
    return answer


class _LoraSteps:
    def __init__(self, demo: Demo, base_f16: Path) -> None:
        from ggufkit.data import embedded_adapter, embedded_model, embedded_text

        self.demo, self.s = demo, demo.settings
        self.base_dir, self.adapter_dir = embedded_model(BASE), embedded_adapter(ADAPTER)
        self.corpus = embedded_text(CORPUS)
        config = WorkspaceConfig(
            source=str(self.base_dir),
            name=MERGED,
            lora=str(self.adapter_dir),
            outdir=".",
            types=list(TYPES),
        )
        self.ws = Workspace(demo.outdir, config)
        self.run = LoraRun(self.adapter_dir, base_f16, self.ws.f16_path, None, PROMPT)

    def rel(self, path: Path) -> Path:
        return Path(self.ws.relative(path))

    def adapter_inputs(self) -> list[dict[str, Any]]:
        """The PEFT adapter as a step's input (role ``lora``): its files' sha256s."""
        from ggufkit.workspace.adapter import adapter_inputs

        return adapter_inputs(self.demo.outdir, str(self.adapter_dir))

    def adapter_gguf(self) -> Path:
        from ggufkit.convert.lora_adapter import convert_lora_adapter, default_adapter_name
        from ggufkit.hub import resolve_model
        from ggufkit.workspace.manifest import model_input

        out = self.demo.outdir / default_adapter_name(self.adapter_dir, "f16")
        command = command_line(
            "convert-lora", adapter=self.adapter_dir, base=str(self.base_dir), output=Path(out.name)
        )
        inputs = self.adapter_inputs()
        inputs.append(model_input(resolve_model(self.base_dir), role="base"))
        self.demo.step(
            self.ws,
            "convert-lora",
            out,
            lambda: convert_lora_adapter(self.adapter_dir, self.base_dir, out, force=True),
            command,
            inputs,
            outtype="f16",
        )
        return out

    def answer(self, route: str, model: Path, lora: Path | None) -> Answer:
        from ggufkit.inference.generate import generate
        from ggufkit.inference.sampling import Sampling

        sampling = Sampling(max_tokens=self.s.answer_tokens, temperature=0.0, seed=self.s.seed)
        done = generate(model, PROMPT, sampling, threads=self.demo.threads, lora=lora)
        command = command_line(
            "run",
            model=self.rel(model),
            prompts=(PROMPT,),
            max_tokens=self.s.answer_tokens,
            temp=0.0,
            seed=self.s.seed,
            lora=self.rel(lora) if lora is not None else None,
        )
        return Answer(route, done.text, done.tokens, command)

    def peft_answer(self) -> Answer:
        out = self.demo.outdir / f"{ADAPTER}-peft-answer.json"
        args = (str(self.base_dir), str(self.adapter_dir), PROMPT, self.s.answer_tokens)
        program = (
            "from ggufkit.demo.lora_run import write_peft_answer; "
            f"write_peft_answer(*{args!r}, {out.name!r})"
        )
        from ggufkit.hub import resolve_model
        from ggufkit.workspace.manifest import model_input

        inputs = self.adapter_inputs()
        inputs.append(model_input(resolve_model(self.base_dir), role="base"))
        self.demo.step(
            self.ws,
            "peft",
            out,
            lambda: write_peft_answer(*args, out),
            ["python", "-c", program],  # no ggufkit command runs PEFT: this line does
            inputs,
            prompt=PROMPT,
            max_tokens=self.s.answer_tokens,
        )
        data = json.loads(out.read_text(encoding="utf-8"))
        return Answer("peft", data["text"], data["tokens"])

    def evaluate(self, out: Path, models: list[Path], lora: Path | None) -> EvalReport:
        from ggufkit.evaluate import EvalReport, evaluate

        s = self.s
        values: dict[str, Any] = {"ctx": s.ctx, "chunks": s.chunks, "speed": False}

        def action() -> None:
            report = evaluate(
                models,
                corpus=self.corpus,
                threads=self.demo.threads,
                tmp_dir=self.demo.outdir,
                lora=lora,
                **values,
            )
            for measured in report.models:
                measured.model = BASE  # one row group: the columns say what each file is
            write_json_atomic(out, report.to_json())

        files = tuple(self.rel(p) for p in models)
        rel_lora = self.rel(lora) if lora is not None else None
        command = command_line("eval", models=files, corpus=self.corpus, lora=rel_lora, **values)
        inputs = [file_input(p, role="model") for p in models]
        inputs += [file_input(self.corpus, role="corpus")]
        inputs += [file_input(lora, role="lora_gguf")] if lora is not None else []
        flags = command[2 + len(files) :]
        self.demo.step(
            self.ws, "eval", out, action, command, inputs, flags=flags, threads=self.demo.threads
        )
        return EvalReport.from_json(json.loads(out.read_text(encoding="utf-8")))

    def verify(self, route: str, model: Path, lora: Path | None) -> Check:
        from ggufkit.inference.verify import verify

        out = self.demo.outdir / f"{ADAPTER}-verify-{route}.json"

        def action() -> None:
            report = verify(
                model, self.base_dir, text_file=self.corpus, lora=lora, adapter=self.adapter_dir
            )
            write_json_atomic(out, report.to_json())

        command = command_line(
            "verify",
            file=self.rel(model),
            hf_dir=self.base_dir,
            corpus=self.corpus,
            lora=self.rel(lora) if lora is not None else None,
            adapter=self.adapter_dir,
        )
        inputs = [file_input(model, role="model"), file_input(self.corpus, role="corpus")]
        inputs += [file_input(lora, role="lora_gguf")] if lora is not None else []
        inputs += self.adapter_inputs()
        self.demo.step(self.ws, "verify", out, action, command, inputs)
        data = json.loads(out.read_text(encoding="utf-8"))
        logits = data["logits"]
        return Check(
            route,
            logits["rel_diff"],
            logits["argmax_agreement"],
            data["max_rel_diff"],
            data["passed"],
            logits["n_positions"],
            out,
        )


def run_lora(demo: Demo, base_f16: Path) -> LoraRun:
    """The embedded adapter on ``base_f16`` (tiny-llama's, converted by the demo) three ways."""
    steps = _LoraSteps(demo, base_f16)
    run = steps.run
    log.info("demo: %s: merge into %s while converting; convert the adapter", ADAPTER, BASE)
    demo.result.steps.append(steps.ws.convert(force=demo.force, threads=demo.threads))
    no_torch, no_peft = _missing(ADAPTER_MODULES), _missing(PEFT_MODULES)
    if no_torch:
        run.skipped.append(
            f"the adapter GGUF (convert-lora): {', '.join(no_torch)} not installed "
            "(pip install 'ggufkit[torch]')"
        )
    else:
        run.adapter_gguf = steps.adapter_gguf()
    log.info("demo: %s: greedy answers and held-out perplexity on %s", ADAPTER, CORPUS)
    if run.adapter_gguf is not None:
        run.answers["adapter"] = steps.answer("adapter", base_f16, run.adapter_gguf)
    run.answers["merged"] = steps.answer("merged", run.merged, None)
    if no_peft:
        run.skipped.append(
            f"PEFT's answer and verify: {', '.join(no_peft)} not installed "
            "(pip install 'ggufkit[torch]')"
        )
    else:
        run.answers["peft"] = steps.peft_answer()
        if run.adapter_gguf is not None:
            run.checks["adapter"] = steps.verify("adapter", base_f16, run.adapter_gguf)
        run.checks["merged"] = steps.verify("merged", run.merged, None)
    run.eval_json = demo.outdir / f"{ADAPTER}-eval.json"
    run.report = steps.evaluate(run.eval_json, [base_f16, run.merged], None)
    if run.adapter_gguf is not None:
        run.adapter_eval_json = demo.outdir / f"{ADAPTER}-adapter-eval.json"
        run.adapter_report = steps.evaluate(run.adapter_eval_json, [base_f16], run.adapter_gguf)
    return run
