"""`ggufkit bnb MODEL --image PICTURE -p QUESTION`: the seed's script, and the GGUF pair beside it.

Options left at their defaults take the seed's values (nf4-dq, f16 compute, its skip list, 10
repetitions); options that belong to the text path's quality measure are refused.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ggufkit.bnb.image import (
    DEFAULT_QUESTION,
    SEED_MODES,
    SEED_RUNS,
    SEED_SKIP_MODULES,
    ImageBnbOptions,
    run_image_bnb,
)
from ggufkit.bnb.image_results import markdown
from ggufkit.bnb.modes import parse_modes
from ggufkit.cli.options import echo_result
from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.hub import ResolvedModel

# text-path options that mean nothing for one question about a picture
TEXT_ONLY = {
    "prompts_file": "--prompts",
    "corpus": "--corpus",
    "ctx": "--ctx",
    "chunks": "--chunks",
    "quality": "--quality/--no-quality",
    "fp32_cpu_offload": "--fp32-cpu-offload",
}


def image_command(
    model: ResolvedModel,
    image: Path,
    gguf: Path | None,
    mmproj: Path | None,
    prompt: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run ``bnb --image`` with the values of the current ``bnb`` command line."""
    from ggufkit.compare import image_gguf_row

    ctx = click.get_current_context()
    params = ctx.params

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    refused = [flag for name, flag in TEXT_ONLY.items() if given(name)]
    if refused:
        raise UsageError(
            f"{', '.join(refused)} do(es) not apply to --image",
            hint="--image measures one question about the picture (no corpus, no perplexity)",
        )
    if len(prompt) > 1:
        raise UsageError("--image takes one -p question", hint='-p "What is in the picture?"')
    skip = params["skip_modules"] if given("skip_modules") else ",".join(SEED_SKIP_MODULES)
    device = params["device"] or "auto"
    options = ImageBnbOptions(
        image=image,
        question=prompt[0] if prompt else DEFAULT_QUESTION,
        modes=parse_modes(params["modes"] if given("modes") else ",".join(SEED_MODES)),
        compute_dtype=params["compute_dtype"] or "f16",
        quant_storage=params["quant_storage"],
        skip_modules=[m.strip() for m in skip.split(",") if m.strip()],
        int8_threshold=params["int8_threshold"],
        runs=params["repetitions"] if given("repetitions") else SEED_RUNS,
        max_new_tokens=params["max_new_tokens"],
        save=params["save"],
        trust_remote_code=params["trust_remote_code"],
        device={"gpu": "cuda"}.get(device, device),
        seed=params["seed"],
        threads=params["threads"],
    )
    report = run_image_bnb(model, options)
    if gguf is not None:
        report.add(image_gguf_row(gguf, mmproj, report, tokenizer_dir=model.path,
                                  threads=params["threads"]))  # fmt: skip
    echo_result(report, as_json, markdown)
    if report.failed:
        raise EvaluationError(
            f"{len(report.failed)} row(s) failed: "
            + "; ".join(f"{r.name}: {r.reason}" for r in report.failed),
            hint="the other results are above; GGUFKIT_DEBUG=1 -v shows the tracebacks",
        )
