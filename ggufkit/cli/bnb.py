"""`ggufkit bnb`: nf4 / nf4-dq / fp4 / fp4-dq / int8 through bitsandbytes, before and after."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ggufkit.bnb import DEFAULT_PROMPTS, BnbOptions, markdown, parse_modes, run_bnb
from ggufkit.bnb.image import (
    DEFAULT_QUESTION,
    SEED_MODES,
    SEED_RUNS,
    SEED_SKIP_MODULES,
    ImageBnbOptions,
    run_image_bnb,
)
from ggufkit.bnb.image_results import ImageReport
from ggufkit.bnb.image_results import markdown as image_markdown
from ggufkit.bnb.modes import COMPUTE_DTYPES, MODES, QUANT_STORAGE
from ggufkit.cli.options import (
    DeviceChoice,
    choice_option,
    chunks_option,
    corpus_option,
    count_option,
    ctx_option,
    deprecated_alias,
    echo_result,
    json_option,
    path_option,
    repetitions_option,
    threads_option,
)
from ggufkit.core.cmdline import from_context
from ggufkit.core.errors import EvaluationError, InputError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.hub import ResolvedModel, resolve_model
from ggufkit.workspace.bnb import (
    record_image_in_workspace,
    record_in_workspace,
    workspace_model,
)

log = get_logger("cli.bnb")


def _prompts(prompt: tuple[str, ...], prompts_file: Path | None) -> list[str]:
    if prompt and prompts_file:
        raise UsageError("give --prompt or --prompts, not both")
    if prompts_file is None:
        return list(prompt) or list(DEFAULT_PROMPTS)
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {prompts_file}: {exc}", path=prompts_file) from exc
    found = [line.strip() for line in lines if line.strip()]
    if not found:
        raise UsageError(f"{prompts_file} holds no prompt", hint="one prompt per line")
    return found


@click.command("bnb")
@deprecated_alias("--runs", "--repetitions", "repetitions", type=int)
@click.argument("model", required=False)
@click.option(
    "--modes",
    default=",".join(MODES),
    show_default=True,
    help="Comma-separated bitsandbytes modes to measure (or all).",
)
@choice_option(
    "--compute-dtype",
    choices=COMPUTE_DTYPES,
    help="Baseline dtype and 4-bit compute dtype (default: bf16/f16 on CUDA, f32 on CPU).",
)
@choice_option(
    "--quant-storage",
    choices=QUANT_STORAGE,
    default="uint8",
    help="Storage dtype of packed 4-bit weights.",
)
@click.option(
    "--skip-modules",
    default="",
    help="Comma-separated modules kept unquantized, besides lm_head and tied weights.",
)
@click.option(
    "--int8-threshold",
    type=float,
    default=6.0,
    show_default=True,
    help="LLM.int8() outlier threshold (int8 mode).",
)
@click.option(
    "--fp32-cpu-offload",
    is_flag=True,
    help="CUDA: place what does not fit on the GPU on the CPU in fp32 (device_map auto).",
)
@click.option("--prompt", "-p", multiple=True, help="A prompt to generate from. Repeatable.")
@path_option("--prompts", "prompts_file", kind="file", help="A file with one prompt per line.")
@repetitions_option
@count_option("--max-new-tokens", default=32, help="Tokens generated per prompt (greedy).")
@path_option(
    "--save",
    kind="dir",
    help="Save each quantized model (safetensors and tokenizer) to DIR/<mode>.",
)
@click.option(
    "--trust-remote-code", is_flag=True, help="Run Python code shipped with the model (auto_map)."
)
@click.option(
    "--device",
    type=DeviceChoice(),
    default=None,
    help="cpu or gpu (CUDA; CUDA_VISIBLE_DEVICES picks one). Default: the GPU when torch sees "
    "one, else the CPU.",
)
@corpus_option()
@ctx_option()
@chunks_option
@click.option(
    "--quality/--no-quality",
    default=True,
    help="Measure perplexity and the deviation from the baseline (default: on).",
)
@count_option("--seed", default=0, minimum=0, help="torch seed for each run.")
@threads_option
@path_option(
    "--image",
    kind="file",
    default=None,
    help="A picture to ask the -p question about (a vision-language checkpoint), with the "
    "defaults of the classic MiniCPM-V bitsandbytes script (nf4-dq, f16 compute, "
    "out_proj/kv_proj/lm_head kept, 10 repetitions); each option above overrides one.",
)
@path_option(
    "--gguf",
    kind="file",
    default=None,
    help="With --image: the converted GGUF model, answered through llama-mtmd-cli in the same "
    "table (default in a workspace: its converted f16 file and mmproj).",
)
@path_option(
    "--mmproj",
    kind="file",
    default=None,
    help="With --image: the vision projector (default: the mmproj-<model> file convert wrote).",
)
@json_option
def command(
    model: str | None,
    modes: str,
    compute_dtype: str | None,
    quant_storage: str,
    skip_modules: str,
    int8_threshold: float,
    fp32_cpu_offload: bool,
    prompt: tuple[str, ...],
    prompts_file: Path | None,
    repetitions: int,
    max_new_tokens: int,
    save: Path | None,
    trust_remote_code: bool,
    device: str | None,
    corpus: Path | None,
    ctx: int | None,
    chunks: int | None,
    quality: bool,
    seed: int,
    threads: int | None,
    image: Path | None,
    gguf: Path | None,
    mmproj: Path | None,
    as_json: bool,
) -> None:
    """Quantize a Hugging Face model in-process with bitsandbytes and compare each mode with the
    unquantized model: load time, generation time, tokens/s, memory, perplexity, KL-divergence,
    top-1 agreement and logit deviation, as the guides' before/after table.

    MODEL is a checkpoint directory or a Hub id (default: the workspace's model; results are
    then recorded in its manifest). Runs on CPU without a GPU; the bitsandbytes CPU defects are
    guarded against and every guard is listed under Notes.

    \b
    Examples:
        ggufkit bnb ./my-model
        ggufkit bnb ./my-model --modes nf4,int8 --repetitions 10 --prompt "Tell me about Paris"
        ggufkit bnb ./my-model --device gpu --compute-dtype f16 --json > bnb.json
        ggufkit bnb ./my-model --modes nf4-dq --save quantized/
        ggufkit bnb ./my-vlm --image cat.png -p "What is in the picture?" --gguf vlm-F16.gguf

    With --image, MODEL is a vision-language checkpoint (MiniCPM-V, Qwen2-VL, ...) and the table
    is the classic MiniCPM-V script's: the greedy answer, the time and tokens of N runs, memory
    and size, before and after quantization (--save writes each quantized model with its
    processor and reloads it), with the GGUF pair's row beside them when --gguf is given (in a
    workspace: its converted pair, and the results are recorded in its manifest).
    """
    started = time.perf_counter()
    ref, workspace = workspace_model(model)
    resolved = resolve_model(ref)
    if image is None and (gguf is not None or mmproj is not None):
        raise UsageError("--gguf and --mmproj need --image", hint="give the picture with --image")
    if image is not None:
        if gguf is None and workspace is not None and workspace.f16_path.is_file():
            gguf = workspace.f16_path  # the workspace's converted pair
            log.info("the GGUF row: %s (the workspace's)", gguf)
        image_report = _image_command(resolved, image, gguf, mmproj, prompt)
        if workspace is not None:
            recorded = record_image_in_workspace(
                image_report,
                workspace,
                resolved,
                command=from_context(model=resolved.describe()),
                seconds=time.perf_counter() - started,
            )
            log.info("results written to %s and recorded in %s", recorded, workspace.manifest_path)
        echo_result(image_report, as_json, image_markdown)
        _fail_on(image_report.failed, "row(s)")
        return
    options = BnbOptions(
        modes=parse_modes(modes),
        compute_dtype=compute_dtype,
        quant_storage=quant_storage,
        skip_modules=[m.strip() for m in skip_modules.split(",") if m.strip()],
        int8_threshold=int8_threshold,
        fp32_cpu_offload=fp32_cpu_offload,
        prompts=_prompts(prompt, prompts_file),
        runs=repetitions,
        max_new_tokens=max_new_tokens,
        save=save,
        trust_remote_code=trust_remote_code,
        device={"gpu": "cuda"}.get(device or "auto", device or "auto"),
        corpus=corpus,
        quality=quality,
        ctx=ctx,
        chunks=chunks,
        seed=seed,
        threads=threads,
    )
    report = run_bnb(resolved, options)
    if workspace is not None:
        recorded = record_in_workspace(
            report,
            workspace,
            resolved,
            options={
                "modes": [m.name for m in options.modes],
                "compute_dtype": report.compute_dtype,
                "quant_storage": quant_storage,
                "skip_modules": list(options.skip_modules),
                "int8_threshold": int8_threshold,
                "device": report.device,
                "runs": repetitions,
                "max_new_tokens": max_new_tokens,
                "seed": seed,
            },
            command=from_context(model=resolved.describe()),
            seconds=time.perf_counter() - started,
        )
        log.info("results written to %s and recorded in %s", recorded, workspace.manifest_path)
    echo_result(report, as_json, markdown)
    _fail_on(report.failed, "mode(s)")


def _fail_on(failed: list[Any], what: str) -> None:
    """After the table: an error naming the rows that failed (the others are shown)."""
    if failed:
        raise EvaluationError(
            f"{len(failed)} {what} failed: " + "; ".join(f"{r.name}: {r.reason}" for r in failed),
            hint="the other results are above; GGUFKIT_DEBUG=1 -v shows the tracebacks",
        )


# text-path options that mean nothing for one question about a picture
TEXT_ONLY = {
    "prompts_file": "--prompts",
    "corpus": "--corpus",
    "ctx": "--ctx",
    "chunks": "--chunks",
    "quality": "--quality/--no-quality",
    "fp32_cpu_offload": "--fp32-cpu-offload",
}


def _image_command(
    model: ResolvedModel,
    image: Path,
    gguf: Path | None,
    mmproj: Path | None,
    prompt: tuple[str, ...],
) -> ImageReport:
    """Run ``bnb --image`` with the values of the current ``bnb`` command line."""
    from ggufkit.compare import image_gguf_row
    from ggufkit.inference.image_chat import check_picture

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
    with tempfile.TemporaryDirectory() as scratch:  # the picture's limits, before PIL decodes it
        check_picture(image, Path(scratch))
    report = run_image_bnb(model, options)
    if gguf is not None:
        report.add(image_gguf_row(gguf, mmproj, report, tokenizer_dir=model.path,
                                  threads=params["threads"],
                                  trust_remote_code=params["trust_remote_code"]))  # fmt: skip
    return report
