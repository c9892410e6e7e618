"""Text generation through llama-cpp-python on ggufkit's own llama.cpp build (``ggufkit run``)."""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.evaluate.ppl import quiet_llama_logs
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.llamacpp.bindings import load_llama_cpp

log = get_logger("generate")

DEFAULT_MAX_CTX = 4096
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


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
    *,
    max_tokens: int = 128,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int | None = None,
    stop: Sequence[str] = (),
    chat: bool = False,
    system: str | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Generate from ``prompt``, passing each piece of text to ``on_text`` as it is produced.

    With ``chat`` the prompt is a user message formatted by the GGUF's own chat template. A fixed
    ``seed`` makes sampling reproducible; without one a seed is drawn and reported.
    """
    model = Path(model)
    info = read_gguf(model, max_array_items=0)
    if chat and not isinstance(info.metadata.get(CHAT_TEMPLATE_KEY), str):
        raise UsageError(
            f"{model} has no chat template ({CHAT_TEMPLATE_KEY})",
            hint="run without --chat, or convert from a checkpoint whose tokenizer_config.json "
            "has a chat_template",
        )
    if max_tokens < 1:
        raise UsageError("-n must be at least 1")
    seed = seed if seed is not None else random.randrange(2**31)
    train_ctx = info.metadata.get(f"{info.architecture}.context_length")
    n_ctx = ctx or min(
        train_ctx if isinstance(train_ctx, int) and train_ctx > 0 else 2048, DEFAULT_MAX_CTX
    )
    llama_cpp = load_llama_cpp()
    quiet_llama_logs()
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "seed": seed, "verbose": False}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    if chat:
        kwargs["chat_format"] = "chat_template.default"  # the GGUF's template, never a guess
    try:
        llm = llama_cpp.Llama(model_path=str(model), **kwargs)
    except ValueError as exc:
        raise EvaluationError(
            f"llama.cpp could not load {model}: {exc}",
            hint="check it with `ggufkit inspect`; try a smaller --ctx",
        ) from exc
    options: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stop": list(stop) or None,
        "stream": True,
    }
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
        if chat:
            messages = [{"role": "user", "content": prompt}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            stream: Iterator[Any] = llm.create_chat_completion(messages=messages, **options)
        else:
            stream = llm.create_completion(prompt, **options)
        for chunk in stream:
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
        seconds = time.perf_counter() - started
        llm.close()
    return GenerationResult(
        "".join(pieces), counts["prompt"], counts["sampled"], finish, seed, seconds
    )
