"""``eval --lora``: the LoRA GGUF checked against every model before anything runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ggufkit.core.errors import UsageError
from ggufkit.core.log import get_logger

log = get_logger("evaluate.lora")


def check_eval_lora(
    lora: str | Path | None, models: Sequence[Path], target_error: float | None, speed: bool
) -> tuple[Path | None, bool]:
    """The LoRA GGUF, checked against every model before any runs; whether speed is measured."""
    if lora is None:
        return None, speed
    if target_error is not None:
        raise UsageError(
            "--lora and --target-error cannot be combined yet",
            hint="score the whole corpus (leave --target-error out), or evaluate a merged GGUF",
        )
    from ggufkit.formats.gguf_lora import check_lora_fits

    for model in models:
        check_lora_fits(model, lora)
    if speed:
        log.info("llama-bench cannot apply a LoRA adapter: speed is not measured with --lora")
    return Path(lora), False
