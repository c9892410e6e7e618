"""ggufkit's answers to the pinned upstream converter, per architecture (data, one place).

Each entry is a ``config.json`` field the converter reads but a checkpoint saved by transformers
5 lacks (the config class dropped or renamed it), with the value transformers itself computes
with: a constant, or ``From(path, default)``, the field's new home in the transformers 5 config.
The upstream engine's child sets it where the checkpoint has none, so the converted file computes
what transformers computes. docs/architectures.md names each fix in its row; the architecture
matrix (scripts/archmatrix) is what found them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class From:
    """The value at ``path`` (keys, outermost first) of the config, else ``default``."""

    path: tuple[str, ...]
    default: Any
    per_layer: bool = False  # a list with the value for each layer
    times: int = 1  # a multiple of the value

    def read(self, config: dict[str, Any]) -> Any:
        value: Any = config
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                value = self.default
                break
            value = value[key]
        if self.times != 1 and value is not None:
            value = value * self.times
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


@dataclass(frozen=True)
class RotaryDims:
    """How many dims of a head transformers rotates: int(head size x partial_rotary_factor)."""

    default_fraction: float  # the config class's own, where rope_parameters has none

    def read(self, config: dict[str, Any]) -> int:
        head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        rope = config.get("rope_parameters")
        fraction = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
        return int(head * (self.default_fraction if fraction is None else fraction))


@dataclass(frozen=True)
class OfLayerKind:
    """``field`` of the first layer whose ``layer_types`` entry is ``kind``: its entry in
    ``per_layer_config`` (keyed by the layer's index; transformers saves there only what differs
    from the top level), else the top-level value."""

    kind: str
    field: str

    def read(self, config: dict[str, Any]) -> Any:
        kinds = list(config.get("layer_types") or ())
        if self.kind not in kinds:
            return None
        index = kinds.index(self.kind)
        per_layer = config.get("per_layer_config")
        for key, values in per_layer.items() if isinstance(per_layer, dict) else ():
            if str(key).isdigit() and int(key) == index and self.field in (values or {}):
                return values[self.field]
        return config.get(self.field)


COMPUTED = From | CountOf | FlagsOf | RotaryDims | OfLayerKind
PARTIAL_ROTARY = ("rope_parameters", "partial_rotary_factor")

# HF architecture -> {config field the converter reads: transformers' value when it is absent}
HPARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    # AfmoeConfig has no route_norm; transformers always normalises the top-k router weights,
    # upstream writes expert_weights_norm only from route_norm (llama.cpp's default: off).
    "AfmoeForCausalLM": {"route_norm": True},
    # Solar Open is converted as GLM-4 MoE, whose converter assumes half the head rotated
    # where the config does not say; transformers rotates Solar Open's whole head.
    "SolarOpenForCausalLM": {
        "rope_parameters": {"partial_rotary_factor": From(("partial_rotary_factor",), 1.0)}
    },
    # transformers 5 moved rotary_pct into rope_parameters.partial_rotary_factor; upstream reads
    # rotary_pct. Where a config has neither, transformers' own defaults: Cohere2 rotates the
    # whole head, GPT-NeoX a quarter of it (GPTNeoXConfig().rope_parameters).
    "Cohere2ForCausalLM": {"rotary_pct": From(PARTIAL_ROTARY, 1.0)},
    "GPTNeoXForCausalLM": {"rotary_pct": From(PARTIAL_ROTARY, 0.25)},
    # MiMoV2FlashConfig has one set of head sizes for sliding and full layers, sliding layers
    # with twice the key/value heads (transformers' MiMoV2FlashAttention); upstream reads
    # separate swa_* fields. Its rope_parameters are per layer type, and upstream reads the
    # rotary fraction at their top (where it mirrors only a flat config's).
    "MiMoV2FlashForCausalLM": {
        "rope_parameters": {
            "partial_rotary_factor": From(
                ("rope_parameters", "full_attention", "partial_rotary_factor"), 0.334
            )
        },
        "topk_method": "noaux_tc",
        "hybrid_layer_pattern": FlagsOf("layer_types", "sliding_attention"),
        "swa_head_dim": From(("head_dim",), None),
        "swa_v_head_dim": From(("v_head_dim",), None),
        "swa_num_attention_heads": From(("num_attention_heads",), None),
        "swa_num_key_value_heads": From(("num_key_value_heads",), None, times=2),
    },
    # Dots3NoteTextConfig reads the released swa_* fields into per_layer_config (the sliding
    # layers' geometry, saved where it differs from the top level), sliding_window_size into
    # sliding_window and first_k_dense_replace into mlp_layer_types; upstream reads the released
    # names. transformers always rescales the Q/KV latents by sqrt(hidden / rank), upstream only
    # when told; the indexed layers' rope base is rope_parameters.indexed_attention's, which
    # upstream reads at the top (it knows only full_attention as the other kind).
    "Dots3NoteForCausalLM": {
        **{
            f"swa_{field}": OfLayerKind("sliding_attention", field)
            for field in (
                "num_attention_heads",
                "num_key_value_heads",
                "q_lora_rank",
                "kv_lora_rank",
                "head_dim",
                "qk_nope_head_dim",
                "qk_rope_head_dim",
                "v_head_dim",
            )
        },
        "sliding_window_size": From(("sliding_window",), None),
        "first_k_dense_replace": CountOf("mlp_layer_types", "dense"),
        "apply_mla_qkv_lora_rescale": True,
        "rope_parameters": {
            "rope_theta": From(("rope_parameters", "indexed_attention", "rope_theta"), None)
        },
    },
    # DeepseekV4Config marks hash-routed layers in mlp_layer_types; upstream reads a count.
    "DeepseekV4ForCausalLM": {"num_hash_layers": CountOf("mlp_layer_types", "hash_moe")},
    # Glm4MoeLiteConfig marks dense layers in mlp_layer_types; upstream reads a leading count.
    "Glm4MoeLiteForCausalLM": {"first_k_dense_replace": CountOf("mlp_layer_types", "dense")},
    "DeepseekV32ForCausalLM": {"first_k_dense_replace": CountOf("mlp_layer_types", "dense")},
    # MiniMaxM2Config keeps the rotated fraction in rope_parameters (whole head by default, half
    # in the released checkpoints); upstream reads rotary_dim.
    "MiniMaxM2ForCausalLM": {"rotary_dim": RotaryDims(1.0)},
    # BambaConfig rotates half of each head (hard-coded; the released config's attn_rotary_emb,
    # which upstream reads and transformers drops).
    "BambaForCausalLM": {"attn_rotary_emb": RotaryDims(0.5)},
    # HunYuanMoEV1Config: experts as wide as intermediate_size, one shared expert, moe_topk an
    # int; upstream reads per-layer lists.
    "HunYuanMoEV1ForCausalLM": {
        "moe_intermediate_size": From(("intermediate_size",), None, per_layer=True),
        "num_shared_expert": From(("_none_",), 1, per_layer=True),
    },
}


# These routers score experts with a sigmoid, which transformers' config classes do not
# record (the released configs say scoring_func "sigmoid"); upstream writes the gating
# function only from scoring_func, and llama.cpp then falls back to softmax (DeepSeek-V3,
# GLM-4.7-Flash), stops (EXAONE MoE, DeepSeek-V3.2: a required key; dots3-note's converter
# refuses) or aborts (dots.llm1, MiniMax-M2: no gating function).
SIGMOID_ROUTED = (
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "Dots1ForCausalLM",
    "Dots3NoteForCausalLM",
    "ExaoneMoeForCausalLM",
    "Glm4MoeLiteForCausalLM",
    "MiniMaxM2ForCausalLM",
)
for _arch in SIGMOID_ROUTED:
    HPARAM_DEFAULTS.setdefault(_arch, {})["scoring_func"] = "sigmoid"

# Upstream's Qwen3-Next / Qwen3.5 converter counts the multi-token-prediction (MTP) layers from
# mtp_num_hidden_layers, else from the mtp.* tensors, and asserts that there is one unless told
# --no-mtp. transformers drops the MTP head on load and never saves it, so a checkpoint saved by
# transformers has neither: the answer is --no-mtp (the file then has the text model only).
MTP_COUNTED: frozenset[str] = frozenset(
    {
        "MiMoV2FlashForCausalLM",  # its converter assumes MiMo's 3 MTP layers unless --no-mtp
        "Qwen3NextForCausalLM",
        "Qwen3_5ForCausalLM",
        "Qwen3_5ForConditionalGeneration",
        "Qwen3_5MoeForCausalLM",
        "Qwen3_5MoeForConditionalGeneration",
    }
)


def upstream_flags(config: dict[str, Any], tensor_names: Iterable[str]) -> dict[str, str]:
    """Options for the upstream converter, for the architectures in ``config``, with why."""
    if not set(config.get("architectures") or ()) & MTP_COUNTED:
        return {}
    text_config = config.get("text_config")
    counted = config.get("mtp_num_hidden_layers") or (
        isinstance(text_config, dict) and text_config.get("mtp_num_hidden_layers")
    )
    if counted or any(name.startswith(("mtp.", "model.mtp.")) for name in tensor_names):
        return {}
    return {"--no-mtp": "the checkpoint has no MTP weights, as transformers saves it"}


def hparam_answers(config: dict[str, Any]) -> dict[str, Any]:
    """The fields to set, for the architectures in ``config``, that ``config`` lacks (a dict
    answer fills the keys missing from the config's dict of that name)."""
    answers: dict[str, Any] = {}
    for arch in config.get("architectures") or ():
        answers |= _missing(config, config, HPARAM_DEFAULTS.get(arch, {}))
    return answers


def _missing(
    root: dict[str, Any], present: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for key, value in wanted.items():
        if isinstance(value, dict):
            inner_present = present.get(key, {})
            if isinstance(inner_present, dict) and (inner := _missing(root, inner_present, value)):
                answers[key] = inner
        elif key not in present:
            value = value.read(root) if isinstance(value, COMPUTED) else value
            if value is not None:  # transformers has no value either: nothing to answer
                answers[key] = value
    return answers


# transformers 5 renames legacy layer kinds when it loads a config ("mamba" -> "linear_attention",
# "attention" -> "full_attention") and saves the new names; upstream's Granite 4.0-H converter
# knows only the old ones (it would find no attention layer). HF architecture -> {field: {new
# name: the name upstream reads}}.
LEGACY_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "GraniteMoeHybridForCausalLM": {
        "layer_types": {"linear_attention": "mamba", "full_attention": "attention"}
    },
    # Qwen4-Exp's released config calls its QSA (indexed) layers "full_attention", which
    # transformers 5 renames; upstream marks compressed (QSA) layers by the released name.
    "Qwen4ExpForCausalLM": {"layer_types": {"indexed_attention": "full_attention"}},
}


def hparam_renames(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``config`` to give upstream in its own (legacy) names, for its
    architectures."""
    renamed: dict[str, Any] = {}
    for arch in config.get("architectures") or ():
        for key, names in LEGACY_NAMES.get(arch, {}).items():
            values = config.get(key)
            if isinstance(values, list) and any(value in names for value in values):
                renamed[key] = [names.get(value, value) for value in values]
    return renamed
