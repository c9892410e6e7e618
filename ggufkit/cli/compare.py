"""`ggufkit compare`: GGUF types and bitsandbytes modes side by side, as a table and a plot."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import echo_result, json_option, path_option, plot_option
from ggufkit.compare import compare, comparison_table, plot_comparison
from ggufkit.core.log import get_logger

log = get_logger("cli.compare")


@click.command("compare")
@path_option(
    "--eval", "eval_file", kind="file", required=True, help="Output of `ggufkit eval --json`."
)
@path_option(
    "--bnb", "bnb_file", kind="file", required=True, help="Output of `ggufkit bnb --json`."
)
@plot_option("Also write a PNG: perplexity, KL-divergence and tokens/s against size.")
@json_option
def command(eval_file: Path, bnb_file: Path, plot: Path | None, as_json: bool) -> None:
    """Put the GGUF quantization types and the bitsandbytes modes of one model in one table:
    size or memory, bits per weight, tokens/s, perplexity, KL-divergence, top-1 agreement.

    \b
    Examples:
        ggufkit eval model-f16.gguf model-Q4_0.gguf --json > eval.json
        ggufkit bnb ./model --json > bnb.json
        ggufkit compare --eval eval.json --bnb bnb.json --plot compare.png
    """
    comparison = compare(eval_file, bnb_file)
    if plot is not None:
        plot_comparison(comparison, plot)
        log.info("plot written to %s", plot)
    echo_result(comparison, as_json, comparison_table)
