"""`ggufkit verify`: logits and tokenization of a GGUF file against its Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    SHIPPED_TEXT,
    count_option,
    echo_json,
    flash_attn_option,
    json_option,
    path_argument,
    path_option,
)
from ggufkit.core.errors import EvaluationError
from ggufkit.inference.verify import DEFAULT_POSITIONS, verify


@click.command("verify")
@path_argument("file")
@path_option(
    "--against",
    "hf_dir",
    kind="dir",
    required=True,
    help="The Hugging Face checkpoint directory the file was converted from.",
)
@path_option(
    "--text",
    "text_file",
    kind="file",
    help=f"Text to tokenize and score (default: {SHIPPED_TEXT}).",
)
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
@flash_attn_option
@json_option
def command(
    file: Path,
    hf_dir: Path,
    text_file: Path | None,
    positions: int,
    max_rel_diff: float | None,
    as_json: bool,
) -> None:
    """Check that a GGUF file tokenizes and predicts like the checkpoint it came from.

    Tokenization must be identical; llama.cpp's logits are compared position by position with
    transformers' fp32 logits. Exits 1 when a check fails. Needs the [torch] extra.

    \b
    Examples:
        ggufkit verify my-model-f16.gguf --against ./my-model
        ggufkit verify my-model-Q8_0.gguf --against ./my-model --max-rel-diff 0.1 --json
    """
    report = verify(
        file, hf_dir, text_file=text_file, positions=positions, max_rel_diff=max_rel_diff
    )
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.text())
    if not report.passed:
        raise EvaluationError(
            f"{file} does not match {hf_dir}: " + "; ".join(report.problems),
            hint="re-convert it with `ggufkit convert`; report the model if it persists",
        )
