"""`ggufkit compare`: GGUF types and bitsandbytes modes side by side, as a table and a plot."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    deprecated_alias,
    echo_result,
    json_option,
    path_option,
    plot_option,
)
from ggufkit.compare import compare, comparison_table, plot_comparison
from ggufkit.core.log import get_logger

log = get_logger("cli.compare")
_FILE = click.Path(path_type=Path, dir_okay=False)


@click.command("compare")
@deprecated_alias("--eval", "--eval-json", "eval_file", type=_FILE)
@deprecated_alias("--bnb", "--bnb-json", "bnb_file", type=_FILE)
@path_option("--eval-json", "eval_file", kind="file", help="Output of `ggufkit eval --json`.")
@path_option("--bnb-json", "bnb_file", kind="file", help="Output of `ggufkit bnb --json`.")
@plot_option("Also write a PNG: perplexity, KL-divergence and tokens/s against size.")
@json_option
def command(
    eval_file: Path | None, bnb_file: Path | None, plot: Path | None, as_json: bool
) -> None:
    """Put the GGUF quantization types and the bitsandbytes modes of one model in one table:
    size or memory, bits per weight, tokens/s, perplexity, KL-divergence, top-1 agreement.

    \b
    Examples:
        ggufkit eval model-f16.gguf model-Q4_0.gguf --json > eval.json
        ggufkit bnb ./model --json > bnb.json
        ggufkit compare --eval-json eval.json --bnb-json bnb.json --plot compare.png
    """
    if eval_file is None or bnb_file is None:
        raise click.UsageError("give both --eval-json and --bnb-json")
    comparison = compare(eval_file, bnb_file)
    if plot is not None:
        plot_comparison(comparison, plot)
        log.info("plot written to %s", plot)
    echo_result(comparison, as_json, comparison_table)
