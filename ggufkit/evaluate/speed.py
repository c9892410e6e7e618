"""Prompt-processing and generation speed through ``llama-bench -o json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.evaluate.results import SpeedResult
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.llamacpp.attention import fa_args, resolved_flash_attn
from ggufkit.llamacpp.build import find_tool
from ggufkit.llamacpp.device import ngl_args
from ggufkit.llamacpp.runner import run_tool

log = get_logger("evaluate.speed")

DEFAULT_PROMPT = 512
DEFAULT_GEN = 128
DEFAULT_REPETITIONS = 3  # bench and eval alike (docs/options.md)


def parse_bench_json(text: str, model: str) -> list[SpeedResult]:
    """The tests of one ``llama-bench -o json`` run."""
    try:
        start = text.index("[")
        data = json.loads(text[start:])
    except ValueError as exc:
        raise EvaluationError(
            f"llama-bench printed no JSON results for {model}: {text.strip()[-300:] or '(nothing)'}",
            hint="run it again with -v and read the log",
        ) from exc
    if not isinstance(data, list) or not data:
        raise EvaluationError(f"llama-bench returned no tests for {model}")
    results = []
    for item in data:
        results.append(_speed_from(item, model))
    return results


def _speed_from(item: Any, model: str) -> SpeedResult:
    try:
        n_prompt, n_gen = int(item["n_prompt"]), int(item["n_gen"])
        samples = item.get("samples_ts") or []
        return SpeedResult(
            model=model,
            test=f"pp{n_prompt}" if n_gen == 0 else f"tg{n_gen}",
            n_prompt=n_prompt,
            n_gen=n_gen,
            threads=int(item["n_threads"]),
            tps=float(item["avg_ts"]),
            tps_std=float(item.get("stddev_ts") or 0.0),
            repetitions=len(samples) or 1,
            backend=str(item.get("backends", "CPU")),
            model_type=str(item.get("model_type", "")),
            flash_attn=_flash_attn(item.get("flash_attn")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EvaluationError(f"unexpected llama-bench result for {model}: {exc!r}") from exc


def _flash_attn(value: Any) -> str:
    """llama-bench's ``flash_attn`` (the enum: -1 auto, 0 off, 1 on) as on/off."""
    if value in (0, False, "0", "off"):
        return "off"
    if value in (1, True, "1", "on"):
        return "on"
    return resolved_flash_attn("auto")


def benchmark(
    model: str | Path,
    *,
    n_prompt: int = DEFAULT_PROMPT,
    n_gen: int = DEFAULT_GEN,
    repetitions: int = DEFAULT_REPETITIONS,
    threads: Sequence[int] = (),
) -> list[SpeedResult]:
    """Tokens per second for a prompt of ``n_prompt`` and a generation of ``n_gen`` tokens.

    One :class:`SpeedResult` per test and thread count (llama-bench's default threads when none).
    """
    model = Path(model)
    read_gguf(model, max_array_items=0)  # a clear error for a missing or broken file
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise UsageError("give a positive prompt (-p) or generation (-n) length")
    if repetitions < 1:
        raise UsageError("--repetitions must be at least 1")
    args = [
        str(find_tool("llama-bench")),
        "-m",
        str(model),
        "-p",
        str(n_prompt),
        "-n",
        str(n_gen),
        "-r",
        str(repetitions),
        "-o",
        "json",
        *ngl_args(),
        *fa_args(),
    ]
    if threads:
        args += ["-t", ",".join(str(t) for t in threads)]
    log.debug(
        "llama-bench on %s (pp%d, tg%d, %d repetitions)", model.name, n_prompt, n_gen, repetitions
    )
    result = run_tool(args, what=f"llama-bench on {model.name}", hint="read the log")
    return parse_bench_json(result.stdout, str(model))
