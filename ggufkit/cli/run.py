"""`ggufkit run`: generate text with a GGUF file through llama-cpp-python, streamed to stdout."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ggufkit.cli.options import (
    count_option,
    ctx_option,
    device_option,
    echo_json,
    flash_attn_option,
    json_option,
    lora_option,
    path_argument,
    path_option,
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
@path_option(
    "--image",
    kind="file",
    default=None,
    help="A picture to ask about (PNG, JPEG, ...): runs llama-mtmd-cli with the model's mmproj; "
    "with --chat, the picture goes with the first turn.",
)
@path_option(
    "--mmproj",
    kind="file",
    default=None,
    help="With --image: the vision projector (default: the mmproj-<model> file convert wrote).",
)
@ctx_option("Context size (default: the model's, at most 4096).")
@threads_option
@device_option
@flash_attn_option
@lora_option
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
    image: Path | None,
    mmproj: Path | None,
    ctx: int | None,
    threads: int | None,
    lora: Path | None,
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
        ggufkit run vlm-F16.gguf --image cat.png -p "What is in the picture?"
        ggufkit run vlm-F16.gguf --image cat.png --chat -p "What is in it?" -p "Which colour?"
        ggufkit run base-F16.gguf --lora my-lora-F16.gguf -p "Once upon a time"
    """
    if image is not None or mmproj is not None:
        if lora is not None:
            raise UsageError(
                "--lora does not apply to --image yet", hint="merge the adapter first (merge-lora)"
            )
        _image_chat(model, prompts, image, mmproj, chat, system, echo, stop, max_tokens, temp,
                    seed, ctx, threads, as_json)  # fmt: skip
        return
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
            lora=lora,
        )
        if as_json:
            echo_json(
                {"model": str(model), "prompt": prompts[0], **result.to_json(), **_attention()}
            )
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
        lora=lora,
    )
    if as_json:
        turns = [{"prompt": p, **r.to_json()} for p, r in zip(asked, results, strict=True)]
        last = turns[-1] if turns else {}
        echo_json({"model": str(model), **last, "turns": turns, **_attention()})
        return
    if results:
        click.echo()
    for result in results:
        _log_result(result)


def _image_chat(
    model: Path,
    prompts: tuple[str, ...],
    image: Path | None,
    mmproj: Path | None,
    chat: bool,
    system: str | None,
    echo: bool,
    stop: tuple[str, ...],
    max_tokens: int,
    temp: float,
    seed: int | None,
    ctx: int | None,
    threads: int | None,
    as_json: bool,
) -> None:
    from ggufkit.inference.image_chat import image_chat

    if image is None:
        raise UsageError("--mmproj needs --image", hint="give the picture with --image")
    if stop:
        raise UsageError("--stop does not apply to --image", hint="leave --stop out")
    sampling: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temp, "seed": seed,
                                "ctx": ctx, "threads": threads}  # fmt: skip
    if chat:
        _image_conversation(model, prompts, image, mmproj, system, echo, sampling, as_json)
        return
    if system is not None or len(prompts) != 1:
        raise UsageError(
            "--system needs --chat"
            if system is not None
            else "--image takes one -p question; several -p need --chat",
            hint='ggufkit run MODEL.gguf --image PICTURE -p "What is in the picture?"',
        )
    result = image_chat(model, prompts[0], image, mmproj=mmproj, **sampling)
    if as_json:
        echo_json({"prompt": prompts[0], **result.to_json()})
        return
    if echo:
        click.echo(f"> {prompts[0]}")
    click.echo(result.answer)
    log.info("answered in %.2f s with %s (log: %s)", result.seconds, result.mmproj.name,
             result.log_path)  # fmt: skip


def _image_conversation(
    model: Path,
    prompts: tuple[str, ...],
    image: Path,
    mmproj: Path | None,
    system: str | None,
    echo: bool,
    sampling: dict[str, Any],
    as_json: bool,
) -> None:
    """Every turn is known before llama-mtmd-cli starts: from -p, or piped in on stdin."""
    from ggufkit.inference.image_turns import image_conversation

    if not prompts and sys.stdin.isatty():
        raise UsageError(
            "--image --chat takes its turns from -p (repeat it) or piped in, one per line",
            hint="for a live chat, run llama-mtmd-cli -m MODEL --mmproj MMPROJ and type "
            "/image PICTURE, then your questions",
        )
    turns = list(prompts or _stdin_turns())
    result = image_conversation(model, turns, image, mmproj=mmproj, system=system, **sampling)
    if as_json:
        echo_json(result.to_json())
        return
    for prompt, answer in zip(result.turns, result.answers, strict=True):
        if echo:
            click.echo(f"> {prompt}")
        click.echo(answer)
    log.info("%d turns answered in %.2f s with %s (log: %s)", len(result.turns), result.seconds,
             result.mmproj.name, result.log_path)  # fmt: skip


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
            yield line.rstrip("\r\n")


def _log_result(result: GenerationResult) -> None:
    log.info(
        "%d tokens in %.2f s (%.1f tokens/s), seed %d, stopped: %s",
        result.tokens,
        result.seconds,
        result.tokens_per_second,
        result.seed,
        result.finish_reason,
    )


def _attention() -> dict[str, str]:
    """The flash-attention setting the run used, as eval, verify and imatrix record it."""
    from ggufkit.llamacpp.attention import current_flash_attn, resolved_flash_attn

    return {"flash_attn": current_flash_attn(), "flash_attn_resolved": resolved_flash_attn()}
