"""`ggufkit run`: generate text with a GGUF file through llama-cpp-python, streamed to stdout."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ggufkit.cli.options import (
    count_option,
    ctx_option,
    device_option,
    echo_json,
    flash_attn_option,
    json_option,
    path_argument,
    threads_option,
)
from ggufkit.core.errors import UsageError
from ggufkit.core.log import get_logger
from ggufkit.inference.generate import GenerationResult, converse, generate, unescape
from ggufkit.inference.sampling import Sampling

log = get_logger("cli.run")


@click.command("run")
@path_argument("model")
@click.option(
    "-p",
    "--prompt",
    "prompts",
    multiple=True,
    help="The prompt. With --chat: a user message; repeat it for a conversation of several "
    "turns; without it, --chat reads one user message per line from stdin.",
)
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
@click.option(
    "--chat",
    is_flag=True,
    help="A conversation formatted by the GGUF's chat template; replies stop at EOS or at the "
    "template's stop strings.",
)
@click.option("--system", default=None, help="System message (with --chat).")
@click.option(
    "--echo", is_flag=True, help="Print the prompt (with --chat: each user turn) before the reply."
)
@ctx_option("Context size (default: the model's, at most 4096).")
@threads_option
@device_option
@flash_attn_option
@json_option
def command(
    model: Path,
    prompts: tuple[str, ...],
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

    Runs on ggufkit's own llama.cpp build through llama-cpp-python. With --chat, each -p is one
    user turn of a conversation, answered in order with the whole conversation so far; without
    -p, --chat reads user turns from stdin, one per line, until end of input.

    \b
    Examples:
        ggufkit run model-Q4_0.gguf -p "Q: what is your name? A: " -n 32 --stop "Q:" --stop '\\n'
        ggufkit run model-Q4_0.gguf -p "Write a haiku" --chat --seed 1
        ggufkit run model-Q4_0.gguf --chat -p "Hello" -p "Say more" --system "Be brief."
        ggufkit run model-Q4_0.gguf --chat          # type a line, get a reply; Ctrl-D ends
    """
    sampling = Sampling(max_tokens, temp, top_p, seed, tuple(unescape(s) for s in stop))
    if not chat and len(prompts) != 1:
        raise UsageError(
            "give exactly one -p/--prompt" if not prompts else "several -p need --chat",
            hint="use --chat for a conversation of several turns",
        )
    if system is not None and not chat:
        raise UsageError("--system needs --chat")

    def stream(text: str) -> None:
        if not as_json:
            click.echo(text, nl=False)

    if not chat:
        if echo and not as_json:
            click.echo(prompts[0], nl=False)
        result = generate(
            model,
            prompts[0],
            sampling,
            ctx=ctx,
            threads=threads,
            on_text=stream,
        )
        if as_json:
            echo_json({"model": str(model), "prompt": prompts[0], **result.to_json()})
            return
        click.echo()
        _log_result(result)
        return

    asked: list[str] = []

    def on_turn(index: int, prompt: str) -> None:
        asked.append(prompt)
        if index and not as_json:
            click.echo()  # end the previous reply
        if echo and not as_json:
            click.echo(f"> {prompt}")

    results = converse(
        model,
        prompts or _stdin_turns(),
        sampling,
        system=system,
        ctx=ctx,
        threads=threads,
        on_text=stream,
        on_turn=on_turn,
    )
    if as_json:
        turns = [{"prompt": p, **r.to_json()} for p, r in zip(asked, results, strict=True)]
        last = turns[-1] if turns else {}
        echo_json({"model": str(model), **last, "turns": turns})
        return
    if results:
        click.echo()
    for result in results:
        _log_result(result)


def _stdin_turns() -> Iterator[str]:
    """User turns typed on stdin, one per line; a prompt on stderr when it is a terminal."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def _log_result(result: GenerationResult) -> None:
    log.info(
        "%d tokens in %.2f s (%.1f tokens/s), seed %d, stopped: %s",
        result.tokens,
        result.seconds,
        result.tokens_per_second,
        result.seed,
        result.finish_reason,
    )
