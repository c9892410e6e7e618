"""ggufkit's answers to the pinned upstream converter, per architecture (data, one place).

Each entry is a ``config.json`` field the converter reads but a checkpoint saved by transformers
5 may lack (the config class dropped or renamed it), with the value transformers itself computes
with. The upstream engine's child sets it where the checkpoint has none, so the converted file
computes what transformers computes. docs/architectures.md names each fix in its row; the
architecture matrix (scripts/archmatrix) is what found them.
"""

from __future__ import annotations

from typing import Any

# HF architecture -> {config field: the value transformers uses when the field is absent}
HPARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    # AfmoeConfig has no route_norm; transformers always normalises the top-k router weights,
    # upstream writes expert_weights_norm only from route_norm (llama.cpp's default: off).
    "AfmoeForCausalLM": {"route_norm": True},
    # Cohere2Config has no rotary_pct (transformers 5 rotates the whole head); upstream needs it.
    "Cohere2ForCausalLM": {"rotary_pct": 1.0},
}


def hparam_answers(config: dict[str, Any]) -> dict[str, Any]:
    """The fields to set, for the architectures in ``config``, that ``config`` lacks."""
    answers: dict[str, Any] = {}
    for arch in config.get("architectures") or ():
        for key, value in HPARAM_DEFAULTS.get(arch, {}).items():
            if key not in config:
                answers[key] = value
    return answers
