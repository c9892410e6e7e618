"""ggufkit's answers to the pinned upstream converter, per architecture (data, one place).

Each entry is a ``config.json`` field the converter reads but a checkpoint saved by transformers
5 lacks (the config class dropped or renamed it), with the value transformers itself computes
with: a constant, or ``From(path, default)``, the field's new home in the transformers 5 config.
The upstream engine's child sets it where the checkpoint has none, so the converted file computes
what transformers computes. docs/architectures.md names each fix in its row; the architecture
matrix (scripts/archmatrix) is what found them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class From:
    """The value at ``path`` (keys, outermost first) of the config, else ``default``."""

    path: tuple[str, ...]
    default: Any
    per_layer: bool = False  # a list with the value for each layer

    def read(self, config: dict[str, Any]) -> Any:
        value: Any = config
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                value = self.default
                break
            value = value[key]
        return [value] * int(config["num_hidden_layers"]) if self.per_layer else value


@dataclass(frozen=True)
class CountOf:
    """How many entries of the per-layer list ``key`` are ``kind``."""

    key: str
    kind: str

    def read(self, config: dict[str, Any]) -> int:
        return sum(entry == self.kind for entry in config.get(self.key) or ())


@dataclass(frozen=True)
class FlagsOf:
    """The per-layer list ``key`` as 1 where the entry is ``kind``, else 0."""

    key: str
    kind: str

    def read(self, config: dict[str, Any]) -> list[int]:
        return [int(entry == self.kind) for entry in config.get(self.key) or ()]


PARTIAL_ROTARY = ("rope_parameters", "partial_rotary_factor")

# HF architecture -> {config field the converter reads: transformers' value when it is absent}
HPARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    # AfmoeConfig has no route_norm; transformers always normalises the top-k router weights,
    # upstream writes expert_weights_norm only from route_norm (llama.cpp's default: off).
    "AfmoeForCausalLM": {"route_norm": True},
    # transformers 5 moved rotary_pct into rope_parameters.partial_rotary_factor; upstream reads
    # rotary_pct. Where a config has neither, transformers' own defaults: Cohere2 rotates the
    # whole head, GPT-NeoX a quarter of it (GPTNeoXConfig().rope_parameters).
    "Cohere2ForCausalLM": {"rotary_pct": From(PARTIAL_ROTARY, 1.0)},
    "GPTNeoXForCausalLM": {"rotary_pct": From(PARTIAL_ROTARY, 0.25)},
    # MiMoV2FlashConfig has one set of head sizes for sliding and full layers; upstream reads
    # separate swa_* fields.
    "MiMoV2FlashForCausalLM": {
        "topk_method": "noaux_tc",
        "hybrid_layer_pattern": FlagsOf("layer_types", "sliding_attention"),
        "swa_head_dim": From(("head_dim",), None),
        "swa_v_head_dim": From(("v_head_dim",), None),
        "swa_num_attention_heads": From(("num_attention_heads",), None),
        "swa_num_key_value_heads": From(("num_key_value_heads",), None),
    },
    # DeepseekV4Config marks hash-routed layers in mlp_layer_types; upstream reads a count.
    "DeepseekV4ForCausalLM": {"num_hash_layers": CountOf("mlp_layer_types", "hash_moe")},
    # Glm4MoeLiteConfig marks dense layers in mlp_layer_types; upstream reads a leading count.
    "Glm4MoeLiteForCausalLM": {"first_k_dense_replace": CountOf("mlp_layer_types", "dense")},
    # MiniMaxM2Config rotates the whole head; upstream reads rotary_dim.
    "MiniMaxM2ForCausalLM": {"rotary_dim": From(("head_dim",), None)},
    # HunYuanMoEV1Config: experts as wide as intermediate_size, one shared expert, moe_topk an
    # int; upstream reads per-layer lists.
    "HunYuanMoEV1ForCausalLM": {
        "moe_intermediate_size": From(("intermediate_size",), None, per_layer=True),
        "num_shared_expert": From(("_none_",), 1, per_layer=True),
    },
}


def hparam_answers(config: dict[str, Any]) -> dict[str, Any]:
    """The fields to set, for the architectures in ``config``, that ``config`` lacks."""
    answers: dict[str, Any] = {}
    for arch in config.get("architectures") or ():
        for key, value in HPARAM_DEFAULTS.get(arch, {}).items():
            if key not in config:
                answers[key] = (
                    value.read(config) if isinstance(value, From | CountOf | FlagsOf) else value
                )
    return answers
