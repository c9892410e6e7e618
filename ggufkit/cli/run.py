"""`ggufkit run`: generate text with a GGUF file through llama-cpp-python, streamed to stdout."""

from __future__ import annotations

from pathlib import Path

import click

from ggufkit.cli.options import (
    count_option,
    ctx_option,
    echo_json,
    json_option,
    path_argument,
    threads_option,
)
from ggufkit.core.log import get_logger
from ggufkit.evaluate.generate import generate, unescape

log = get_logger("cli.run")


@click.command("run")
@path_argument("model")
@click.option("-p", "--prompt", required=True, help="The prompt (with --chat: the user message).")
@count_option("-n", "--max-tokens", default=128, help="Tokens to generate at most.")
@click.option(
    "--temp",
    type=click.FloatRange(min=0.0),
    default=0.8,
    show_default=True,
    help="Sampling temperature (0: greedy).",
)
@click.option("--top-p", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True)
@count_option("--seed", minimum=0, help="Random seed (fixed: reproducible).")
@click.option(
    "--stop",
    multiple=True,
    help=r"Stop when this text appears; repeatable. Escapes work: --stop '\n'.",
)
@click.option("--chat", is_flag=True, help="Format the prompt with the GGUF's chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--echo", is_flag=True, help="Print the prompt before the generated text.")
@ctx_option("Context size (default: the model's, at most 4096).")
@threads_option
@json_option
def command(
    model: Path,
    prompt: str,
    max_tokens: int,
    temp: float,
    top_p: float,
    seed: int | None,
    stop: tuple[str, ...],
    chat: bool,
    system: str | None,
    echo: bool,
    ctx: int | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Generate text from a prompt, streaming tokens to stdout.

    Runs on ggufkit's own llama.cpp build through llama-cpp-python.

    \b
    Examples:
        ggufkit run model-Q4_0.gguf -p "Q: what is your name? A: " -n 32 --stop "Q:" --stop '\\n'
        ggufkit run model-Q4_0.gguf -p "Write a haiku" --chat --seed 1
    """
    stops = [unescape(s) for s in stop]
    if echo and not as_json:
        click.echo(prompt, nl=False)

    def stream(text: str) -> None:
        if not as_json:
            click.echo(text, nl=False)

    result = generate(
        model,
        prompt,
        max_tokens=max_tokens,
        temperature=temp,
        top_p=top_p,
        seed=seed,
        stop=stops,
        chat=chat,
        system=system,
        ctx=ctx,
        threads=threads,
        on_text=stream,
    )
    if as_json:
        echo_json({"model": str(model), "prompt": prompt, **result.to_json()})
        return
    click.echo()
    log.info(
        "%d tokens in %.2f s (%.1f tokens/s), seed %d, stopped: %s",
        result.tokens,
        result.seconds,
        result.tokens_per_second,
        result.seed,
        result.finish_reason,
    )
