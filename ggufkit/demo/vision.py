"""The demo's image section: one question about the embedded picture, through both paths.

The embedded tiny MiniCPM-V 4.6 (``ggufkit.data``, random seeded weights) is converted into its
GGUF pair (the language model and its mmproj), then asked the same question unquantized and in
nf4 with double quantization through transformers and bitsandbytes (the seed's flow) and through
llama.cpp's ``llama-mtmd-cli``: the answer, the time and tokens of a few runs, memory and size in
one table. Its answers are noise, and the section says so: it shows that each path reads the
picture and answers, not what a trained model would say.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ggufkit.core.cmdline import command_line
from ggufkit.core.fsutil import write_json_atomic
from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    from ggufkit.bnb.image_results import ImageReport
    from ggufkit.workspace import StepResult

log = get_logger("demo")

VLM = "tiny-minicpmv"  # ggufkit.data.embedded_model
PICTURE = "shapes.png"  # ggufkit.data.embedded_picture
QUESTION = "What is in the picture?"
RUNS = 3
TOKENS = 8
MODULES = ("torch", "transformers", "accelerate", "bitsandbytes", "PIL")


class Demo(Protocol):  # what of ggufkit.demo.pipeline's runner the image steps use
    outdir: Path
    threads: int | None
    force: bool
    result: Any  # ggufkit.demo.results.DemoResult

    def step(self, *args: Any, **options: Any) -> StepResult:
        """(workspace, step, output, action, command, inputs, **options): one recorded step."""
        ...


@dataclass
class VisionRun:
    """The image section: the GGUF pair, the table's JSON and what was left out."""

    model: Path  # the embedded checkpoint
    picture: Path
    gguf: Path | None = None
    mmproj: Path | None = None
    report_json: Path | None = None
    report: ImageReport | None = None
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "picture": str(self.picture),
            "gguf": str(self.gguf) if self.gguf else None,
            "mmproj": str(self.mmproj) if self.mmproj else None,
            "report": str(self.report_json) if self.report_json else None,
            "skipped": self.skipped,
        }


def run_vision(demo: Demo) -> VisionRun:
    """Convert the embedded VLM to its GGUF pair and ask both paths about the embedded picture."""
    from ggufkit.bnb.image_results import ImageReport
    from ggufkit.data import embedded_model, embedded_picture
    from ggufkit.workspace import Workspace, WorkspaceConfig
    from ggufkit.workspace.vision_step import recorded_mmproj

    run = VisionRun(embedded_model(VLM), embedded_picture(PICTURE))
    missing = [name for name in MODULES if importlib.util.find_spec(name) is None]
    if missing:
        run.skipped.append(
            f"the image question: {', '.join(missing)} not installed (pip install 'ggufkit[bnb]')"
        )
        return run
    config = WorkspaceConfig(source=str(run.model), name=VLM, outdir=".", types=["q8_0"])
    workspace = Workspace(demo.outdir, config)
    log.info("demo: %s: convert to its GGUF pair (language model + mmproj)", VLM)
    demo.result.steps.append(workspace.convert(force=demo.force, threads=demo.threads))
    run.gguf = workspace.f16_path
    run.mmproj = recorded_mmproj(workspace)  # the projector converted with the model
    run.report_json = demo.outdir / f"{VLM}-image.json"
    _ask(demo, workspace, run)
    run.report = ImageReport.from_json(_read(run.report_json))
    return run


def _read(path: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _ask(demo: Demo, workspace: Any, run: VisionRun) -> None:
    """The recorded step: bitsandbytes (baseline, nf4-dq) and the GGUF pair on one question."""
    from ggufkit.bnb.image import ImageBnbOptions, run_image_bnb
    from ggufkit.bnb.image_results import GGUF, RANDOM_WEIGHTS, ImageRow
    from ggufkit.compare import image_gguf_row
    from ggufkit.core.errors import ToolMissingError
    from ggufkit.hub import resolve_model
    from ggufkit.workspace.manifest import file_input, model_input

    assert run.gguf is not None and run.mmproj is not None and run.report_json is not None
    gguf, mmproj, out = run.gguf, run.mmproj, run.report_json
    resolved = resolve_model(run.model)

    def action() -> None:
        options = ImageBnbOptions(
            image=run.picture,
            question=QUESTION,
            runs=RUNS,
            max_new_tokens=TOKENS,
            threads=demo.threads or 1,  # a model this small runs faster on one thread than two
        )
        report = run_image_bnb(resolved, options)
        try:
            row = image_gguf_row(gguf, mmproj, report, tokenizer_dir=run.model,
                                 threads=options.threads)  # fmt: skip
        except ToolMissingError as exc:
            row = ImageRow(name=GGUF, kind="llama.cpp", status="skipped", reason=str(exc))
        report.add(row)
        report.notes.append(RANDOM_WEIGHTS)
        write_json_atomic(out, report.to_json())

    values = {"repetitions": RUNS, "max_new_tokens": TOKENS}
    command = command_line(
        "bnb",
        model=str(run.model),
        image=run.picture,
        prompt=(QUESTION,),
        gguf=Path(workspace.relative(gguf)),
        **values,
    )
    inputs = [model_input(resolved), file_input(run.picture, role="picture")]
    inputs += [file_input(gguf, role="model"), file_input(mmproj, role="mmproj")]
    log.info("demo: %s: %r through bitsandbytes and llama-mtmd-cli", VLM, QUESTION)
    demo.step(workspace, "bnb-image", out, action, command, inputs, question=QUESTION, **values)


def vision_markdown(run: VisionRun) -> list[str]:
    """The section of results.md: the question, the picture and the table (what was skipped is
    listed with the demo's other skips)."""
    from ggufkit.bnb.image_results import markdown

    lines = [f"## One question about a picture ({VLM}, both paths)", ""]
    if run.report is not None:
        lines += [markdown(run.report), ""]
    return lines


def where_rows(run: VisionRun) -> list[tuple[str, str]]:
    rows = []
    if run.gguf is not None and run.mmproj is not None:
        rows.append((f"{run.gguf.name}, {run.mmproj.name}", f"{VLM}: the GGUF pair"))
    if run.report_json is not None:
        rows.append((run.report_json.name, "one image question: bitsandbytes beside the pair"))
    return rows
