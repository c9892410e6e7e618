"""What flash attention really is for a model on this machine: the setting, or what ``auto``
resolved to in a loaded context.

llama.cpp decides ``auto`` when it makes a context (``resolve_fused_ops`` at the pin): on when the
attention op runs on the device that holds the layer. With every layer on the CPU that is always
so; on a GPU backend it depends on what the device supports (head sizes, types), which only the
loaded context knows. A cache key that names the kernel takes :func:`flash_attn_used`, never the
setting ``auto``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ggufkit.core.errors import EvaluationError
from ggufkit.llamacpp.attention import current_flash_attn, flash_attn_type
from ggufkit.llamacpp.device import current_device, gpu_layers
from ggufkit.llamacpp.isolate import run_isolated

PROBE_CTX = 256  # the decision does not depend on the context size


def flash_attn_used(model: str | Path) -> Literal["on", "off"]:
    """Flash attention as llama.cpp will run ``model`` here: ``on``/``off`` as set; ``auto`` on
    the CPU is on; ``auto`` on a GPU is asked of a context made for it (in a child process)."""
    setting = current_flash_attn()
    if setting != "auto":
        return setting
    if current_device() == "cpu":
        return "on"  # every layer and its attention on the CPU device
    found = run_isolated(
        _probe_here, str(model), what=f"llama.cpp resolving flash attention for {Path(model).name}"
    )
    if found not in ("on", "off"):
        raise EvaluationError(
            f"llama.cpp did not say what flash attention 'auto' resolved to for {model}",
            hint="set it with --flash-attn on or --flash-attn off",
        )
    return "on" if found == "on" else "off"


def _probe_here(model: str) -> str | None:
    """In the child: a context for ``model`` on the current device with flash attention
    ``auto``, and what its log says it chose."""
    from ggufkit.llamacpp.bindings import flash_attn_resolved, load_llama_cpp

    lib = load_llama_cpp()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = gpu_layers()
    loaded = lib.llama_model_load_from_file(model.encode(), mparams)
    if not loaded:
        raise EvaluationError(
            f"llama.cpp could not load {model}", hint="check it with `ggufkit inspect`"
        )
    try:
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = PROBE_CTX
        cparams.flash_attn_type = flash_attn_type("auto")
        context = lib.llama_init_from_model(loaded, cparams)
        if context:
            lib.llama_free(context)
        return flash_attn_resolved()
    finally:
        lib.llama_model_free(loaded)
