"""`ggufkit verify`: logits and tokenization of a GGUF file against its Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ggufkit.cli.options import (
    SHIPPED_TEXT,
    corpus_option,
    count_option,
    deprecated_alias,
    echo_json,
    flash_attn_option,
    json_option,
    lora_option,
    path_argument,
    path_option,
)
from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.inference.verify import DEFAULT_POSITIONS, VerifyReport, verify

if TYPE_CHECKING:
    from ggufkit.inference.image_verify import ImageVerifyReport


@click.command("verify")
@deprecated_alias("--text", "--corpus", "corpus", type=click.Path(path_type=Path, dir_okay=False))
@path_argument("file")
@path_option(
    "--against",
    "hf_dir",
    kind="dir",
    required=True,
    help="The Hugging Face checkpoint directory the file was converted from.",
)
@corpus_option(f"Text to tokenize and score (default: {SHIPPED_TEXT}).")
@count_option(
    "--positions",
    default=DEFAULT_POSITIONS,
    minimum=2,
    help="Token positions whose logits are compared.",
)
@click.option(
    "--max-rel-diff",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Largest |Δlogit| allowed, as a fraction of the largest logit "
    "(default 0.01 for F16/BF16/F32; quantized files are only reported).",
)
@lora_option
@path_option(
    "--against-adapter",
    "adapter",
    kind="dir",
    help="A PEFT LoRA adapter directory: the reference is PEFT (checkpoint + adapter) in "
    "transformers. With --lora for the adapter's GGUF, or alone for a merged GGUF.",
)
@path_option(
    "--image",
    kind="file",
    default=None,
    help="A picture: compare the image embeddings (llama.cpp's vision encoder + projector "
    "against transformers') and the logits of a question after it, instead of the text.",
)
@path_option(
    "--mmproj",
    kind="file",
    default=None,
    help="With --image: the vision projector (default: the mmproj-<model> file convert wrote).",
)
@flash_attn_option
@json_option
def command(
    file: Path,
    hf_dir: Path,
    corpus: Path | None,
    positions: int,
    max_rel_diff: float | None,
    lora: Path | None,
    adapter: Path | None,
    image: Path | None,
    mmproj: Path | None,
    as_json: bool,
) -> None:
    """Check that a GGUF file tokenizes and predicts like the checkpoint it came from.

    Tokenization must be identical; llama.cpp's logits are compared position by position with
    transformers' fp32 logits. Exits 1 when a check fails. Needs the [torch] extra.

    \b
    Examples:
        ggufkit verify my-model-f16.gguf --against ./my-model
        ggufkit verify my-model-Q8_0.gguf --against ./my-model --max-rel-diff 0.1 --json
        ggufkit verify base-f16.gguf --against ./base --lora my-lora.gguf --against-adapter ./my-lora
        ggufkit verify merged-f16.gguf --against ./base --against-adapter ./my-lora
        ggufkit verify vlm-F16.gguf --mmproj mmproj-vlm-F16.gguf --image cat.png --against ./vlm
    """
    if image is not None or mmproj is not None:
        _verify_image(file, hf_dir, image, mmproj, max_rel_diff, corpus, lora, adapter, as_json)
        return
    report = verify(
        file,
        hf_dir,
        text_file=corpus,
        positions=positions,
        max_rel_diff=max_rel_diff,
        lora=lora,
        adapter=adapter,
    )
    _show(report, as_json, f"{file} does not match {hf_dir}", "it")


def _show(report: VerifyReport | ImageVerifyReport, as_json: bool, failed: str, what: str) -> None:
    """The report on stdout; an EvaluationError with its problems when it failed."""
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.text())
    if not report.passed:
        raise EvaluationError(
            f"{failed}: " + "; ".join(report.problems),
            hint=f"re-convert {what} with `ggufkit convert`; report the model if it persists",
        )


def _verify_image(
    file: Path,
    hf_dir: Path,
    image: Path | None,
    mmproj: Path | None,
    max_rel_diff: float | None,
    corpus: Path | None,
    lora: Path | None,
    adapter: Path | None,
    as_json: bool,
) -> None:
    from ggufkit.inference.image_verify import verify_image

    if image is None:
        raise UsageError("--mmproj needs --image", hint="give the picture with --image")
    if corpus is not None or lora is not None or adapter is not None:
        raise UsageError(
            "--image compares a picture and a fixed question after it: --corpus, --lora and "
            "--against-adapter do not apply to it",
            hint="verify the text without --image",
        )
    report = verify_image(file, hf_dir, image, mmproj=mmproj, max_rel_diff=max_rel_diff)
    failed = f"{file} with {report.mmproj} does not see {image} as {hf_dir} does"
    _show(report, as_json, failed, "the pair")
