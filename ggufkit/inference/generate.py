"""Text generation through llama-cpp-python on ggufkit's own llama.cpp build (``ggufkit run``)."""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.evaluate.ppl import quiet_llama_logs
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.inference.chat_render import limit_chat_templates
from ggufkit.inference.sampling import Sampling
from ggufkit.llamacpp.attention import resolved_flash_attn
from ggufkit.llamacpp.bindings import load_llama_cpp
from ggufkit.llamacpp.device import gpu_layers
from ggufkit.llamacpp.isolate import run_isolated

log = get_logger("generate")

DEFAULT_MAX_CTX = 4096
MAX_CTX = 1 << 20  # tokens: an explicit --ctx above a model's trained context is refused too
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
STOP_KEY = "ggufkit.chat_template.stop"  # written by convert with a FastChat template


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int  # with --chat: the prompt as the template formatted it
    tokens: int  # tokens sampled, the end-of-generation token included when one ended it
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    seed: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_second"] = self.tokens_per_second
        return data


def unescape(text: str) -> str:
    r"""Turn ``\n``, ``\t`` and ``\\`` typed on a command line into the characters."""
    if "\\" not in text:
        return text
    try:
        return (
            codecs.decode(text.encode("utf-8"), "unicode_escape").encode("latin-1").decode("utf-8")
        )
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise UsageError(f"bad escape sequence in {text!r}: {exc}") from exc


def generate(
    model: str | Path,
    prompt: str,
    sampling: Sampling = Sampling(),  # noqa: B008 (frozen)
    *,
    chat: bool = False,
    system: str | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    on_text: Callable[[str], None] | None = None,
    lora: str | Path | None = None,
) -> GenerationResult:
    """Generate from ``prompt``, passing each piece of text to ``on_text`` as it is produced.

    With ``chat`` the prompt is a user message formatted by the GGUF's own chat template (see
    :func:`converse` for a conversation). ``lora``: a LoRA GGUF applied at run time (checked
    against the model first). A fixed ``sampling.seed`` makes sampling reproducible;
    without one a seed is drawn and reported. llama.cpp runs in a child process (see
    :mod:`ggufkit.llamacpp.isolate`): a crash there is a ToolCrashedError here.
    """
    if chat:
        return converse(
            model,
            [prompt],
            sampling,
            system=system,
            ctx=ctx,
            threads=threads,
            on_text=on_text,
            lora=lora,
        )[0]
    _check_lora(model, lora)
    return run_isolated(
        _generate_here,
        str(model),
        prompt,
        what=f"llama.cpp generating with {Path(model).name}",
        on_event=on_text,
        event_kwarg="on_text",
        sampling=sampling,
        ctx=ctx,
        threads=threads,
        lora=str(lora) if lora is not None else None,
    )


def _check_lora(model: str | Path, lora: str | Path | None) -> None:
    """Refuse an adapter that does not fit before llama.cpp loads it (llama-cpp-python crashes
    on the NULL llama.cpp returns for it)."""
    if lora is not None:
        from ggufkit.formats.gguf_lora import check_lora_fits

        check_lora_fits(model, lora)


def _generate_here(
    model: str,
    prompt: str,
    *,
    sampling: Sampling,
    ctx: int | None,
    threads: int | None,
    on_text: Callable[[str], None] | None = None,
    lora: str | None = None,
) -> GenerationResult:
    llm, sampling = _open_for(model, sampling, chat=False, ctx=ctx, threads=threads, lora=lora)
    try:
        return _complete(
            llm,
            lambda opts: llm.create_completion(prompt, **opts),
            sampling,
            chat=False,
            on_text=on_text,
        )
    finally:
        llm.close()


def converse(
    model: str | Path,
    prompts: Iterable[str],
    sampling: Sampling = Sampling(),  # noqa: B008 (frozen)
    *,
    system: str | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    on_text: Callable[[str], None] | None = None,
    on_turn: Callable[[int, str], None] | None = None,
    lora: str | Path | None = None,
) -> list[GenerationResult]:
    """A multi-turn conversation: each of ``prompts`` is a user message, answered in turn.

    The whole conversation so far is formatted by the GGUF's chat template for every reply; a
    reply ends at EOS, at the template's stop strings (``ggufkit.chat_template.stop``) or at
    ``sampling.stop``. ``prompts`` may be lazy (a REPL reading stdin): the child process that runs
    llama.cpp asks for each one when it is ready for it. ``on_turn(index, prompt)`` is called
    before each reply, ``on_text`` with each piece of it. Every reply uses the same seed.
    """

    def dispatch(event: tuple[str, Any]) -> None:
        kind, payload = event
        if kind == "text" and on_text is not None:
            on_text(payload)
        elif kind == "turn" and on_turn is not None:
            on_turn(*payload)

    _check_lora(model, lora)
    return run_isolated(
        _converse_here,
        str(model),
        what=f"llama.cpp chatting with {Path(model).name}",
        on_event=dispatch,
        event_kwarg="on_event",
        feed=prompts,
        feed_kwarg="prompts",
        system=system,
        sampling=sampling.with_stops(template_stops(model)),
        ctx=ctx,
        threads=threads,
        lora=str(lora) if lora is not None else None,
    )


def _converse_here(
    model: str,
    *,
    prompts: Iterable[str],
    system: str | None,
    sampling: Sampling,  # the template's own stop strings included, by converse()
    ctx: int | None,
    threads: int | None,
    on_event: Callable[[tuple[str, Any]], None] | None = None,
    lora: str | None = None,
) -> list[GenerationResult]:
    emit = on_event or (lambda event: None)
    llm, sampling = _open_for(model, sampling, chat=True, ctx=ctx, threads=threads, lora=lora)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    results: list[GenerationResult] = []
    try:
        for index, prompt in enumerate(prompts):
            emit(("turn", (index, prompt)))
            messages.append({"role": "user", "content": prompt})
            result = _complete(
                llm,
                lambda opts: llm.create_chat_completion(messages=messages, **opts),
                sampling,
                chat=True,
                on_text=lambda text: emit(("text", text)),
            )
            messages.append({"role": "assistant", "content": result.text})
            results.append(result)
    finally:
        llm.close()
        if llm._ggufkit_template_sandbox is not None:
            llm._ggufkit_template_sandbox.close()
    return results


def template_stops(model: str | Path) -> list[str]:
    """The stop strings convert recorded for the file's chat template (FastChat's stop_str)."""
    value = read_gguf(model, max_array_items=64).metadata.get(STOP_KEY)
    return [str(v) for v in value] if isinstance(value, list) else []


def _open_for(
    model: str,
    sampling: Sampling,
    *,
    chat: bool,
    ctx: int | None,
    threads: int | None,
    lora: str | None = None,
) -> tuple[Any, Sampling]:
    """The model opened for ``sampling``, and ``sampling`` with the seed it was opened with."""
    llm, seed = _open(
        model, chat=chat, ctx=ctx, threads=threads, seed=sampling.seed,
        max_tokens=sampling.max_tokens, lora=lora,
    )  # fmt: skip
    return llm, sampling.with_seed(seed)


def _open(
    model: str | Path,
    *,
    chat: bool,
    ctx: int | None,
    threads: int | None,
    seed: int | None,
    max_tokens: int,
    lora: str | None = None,
) -> tuple[Any, int]:
    """A ``llama_cpp.Llama`` for ``model`` (with the GGUF's chat template when ``chat``)."""
    model = Path(model)
    info = read_gguf(model, max_array_items=0)
    if chat and not isinstance(info.metadata.get(CHAT_TEMPLATE_KEY), str):
        raise UsageError(
            f"{model} has no chat template ({CHAT_TEMPLATE_KEY})",
            hint="run without --chat, or convert again with --chat-template NAME|FILE "
            "(e.g. vicuna_v1.1, phoenix)",
        )
    if max_tokens < 1:
        raise UsageError("-n must be at least 1")
    seed = seed if seed is not None else random.randrange(2**31)
    n_ctx = context_size(model, info.metadata.get(f"{info.architecture}.context_length"), ctx)
    llama_cpp = load_llama_cpp()
    quiet_llama_logs()
    kwargs: dict[str, Any] = {
        "n_ctx": n_ctx,
        "seed": seed,
        "verbose": False,
        "n_gpu_layers": gpu_layers(),  # the same backend as the tools (-ngl)
        "flash_attn": resolved_flash_attn() == "on",  # the same kernel as the tools (-fa)
    }
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    if lora is not None:
        kwargs["lora_path"] = lora
    sandbox = None
    if chat:
        kwargs["chat_format"] = "chat_template.default"  # the GGUF's template, never a guess
        # Compiled and rendered in a child under limits, never in this process (chat_render).
        sandbox = limit_chat_templates(model, info.metadata[CHAT_TEMPLATE_KEY])
    try:
        llm = llama_cpp.Llama(model_path=str(model), **kwargs)
        llm._ggufkit_template_sandbox = sandbox  # closed with the model
        return llm, seed
    except ValueError as exc:
        if sandbox is not None:
            sandbox.close()
        raise EvaluationError(
            f"llama.cpp could not load {model}: {exc}",
            hint="check it with `ggufkit inspect`; try a smaller --ctx",
        ) from exc


def context_size(model: Path, trained: Any, ctx: int | None) -> int:
    """The context to open ``model`` with: ``ctx``, at most the trained context (and MAX_CTX:
    the KV cache grows with it, 8 GB for 2**31 tokens of even a tiny model); by default the
    trained one up to DEFAULT_MAX_CTX."""
    trained = trained if isinstance(trained, int) and trained > 0 else None
    if ctx is None:
        return min(trained or 2048, DEFAULT_MAX_CTX)
    limit = min(trained or MAX_CTX, MAX_CTX)
    if not 0 < ctx <= limit:
        what = f"{model.name}'s trained context" if trained and trained <= MAX_CTX else "the limit"
        raise UsageError(
            f"--ctx {ctx} is not between 1 and {limit} ({what})",
            hint=f"pass --ctx {limit} or less, or leave it out",
        )
    return ctx


def _complete(
    llm: Any,
    start: Callable[[dict[str, Any]], Iterator[Any]],
    sampling: Sampling,
    *,
    chat: bool,
    on_text: Callable[[str], None] | None,
) -> GenerationResult:
    """Stream one completion, counting the prompt's and the sampled tokens."""
    pieces: list[str] = []
    finish = "length"
    counts = {"sampled": 0, "prompt": 0}
    sample = llm.sample

    def counting_sample(*args: Any, **kwargs: Any) -> Any:
        # The prompt is in the context before the first token is sampled.
        counts["prompt"] = counts["prompt"] or int(llm.n_tokens)
        counts["sampled"] += 1
        return sample(*args, **kwargs)

    llm.sample = counting_sample
    started = time.perf_counter()
    try:
        for chunk in start(sampling.completion_options()):
            choice = chunk["choices"][0]
            text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)
            finish = choice.get("finish_reason") or finish
    except ValueError as exc:  # e.g. "Requested tokens (…) exceed context window of …"
        raise UsageError(str(exc), hint="shorten the prompt, lower -n or raise --ctx") from exc
    finally:
        llm.sample = sample
    seconds = time.perf_counter() - started
    assert sampling.seed is not None, "the seed the model was opened with"
    return GenerationResult(
        "".join(pieces), counts["prompt"], counts["sampled"], finish, sampling.seed, seconds
    )
