"""Flash attention: one setting for every llama.cpp tool ggufkit runs and for the bindings.

Flash attention changes the numbers, not only the speed: its kernel accumulates in f16 where the
plain path accumulates in f32, so a perplexity measured with it on differs from one measured
with it off (by about 2e-3 relative on a 135M model). llama.cpp's tools default to ``auto``
while llama-cpp-python defaulted to off, so eval's two paths disagreed. ``GGUFKIT_FLASH_ATTN``
(``auto``, the default, ``on`` or ``off``) is read by every caller and inherited by spawned
children; ``--flash-attn`` on eval/imatrix/verify/bench/run sets it through :func:`use_flash_attn`.

``auto`` is llama.cpp's own rule: at the pin, the context enables flash attention when the
attention op runs on the device that holds the layer, which on the CPU backend is always.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager
from typing import Literal

from ggufkit.core.env import scoped_env
from ggufkit.core.errors import UsageError

FlashAttn = Literal["auto", "on", "off"]
SETTINGS: tuple[FlashAttn, ...] = ("auto", "on", "off")
ENV = "GGUFKIT_FLASH_ATTN"
# llama.h's enum llama_flash_attn_type
_ENUM = {"auto": -1, "off": 0, "on": 1}
# What llama_context logs once it has resolved "auto" (resolve_fused_ops at the pin).
_RESOLVED = re.compile(r"Flash Attention (enabled|not supported, set to disabled)")


def current_flash_attn() -> FlashAttn:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value in ("on", "off", "auto"):
        return value  # type: ignore[return-value]
    raise UsageError(
        f"{ENV}={value!r} is not a flash-attention setting", hint="use auto, on or off"
    )


def fa_args(setting: FlashAttn | None = None) -> list[str]:
    """``-fa on|off|auto`` for llama-perplexity, llama-imatrix and llama-bench."""
    return ["-fa", setting or current_flash_attn()]


def flash_attn_type(setting: FlashAttn | None = None) -> int:
    """The ``llama_flash_attn_type`` value for ``llama_context_params.flash_attn_type``."""
    return _ENUM[setting or current_flash_attn()]


def resolved_flash_attn(setting: FlashAttn | None = None) -> Literal["on", "off"]:
    """What ``setting`` means: ``auto`` is on for the CPU backend and for the GPU backends
    ggufkit builds, whose attention runs on the layer's device (a tool's log, read by
    :func:`resolved_from_log`, is the last word)."""
    value = setting or current_flash_attn()
    return "on" if value == "auto" else value


def resolved_from_log(text: str) -> Literal["on", "off"] | None:
    """What a llama.cpp tool's log says ``auto`` resolved to; None when it does not say."""
    match = _RESOLVED.search(text)
    if match is None:
        return None
    return "on" if match.group(1) == "enabled" else "off"


def use_flash_attn(setting: FlashAttn | None) -> AbstractContextManager[None]:
    """Set flash attention for everything inside (and for children started meanwhile)."""
    return scoped_env(ENV, setting)
