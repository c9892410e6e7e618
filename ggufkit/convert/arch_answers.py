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
from typing import Any

from ggufkit.convert.arch_computed import (
    COMPUTED,
    PARTIAL_ROTARY,
    CountOf,
    FlagsOf,
    From,
    IndicesOf,
    OfLayerKind,
    RotaryDims,
    ValuesOf,
)

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
    # DeepseekV4Config marks hash-routed layers in mlp_layer_types and each layer's compression
    # in layer_types (rates in compress_rates; sliding layers compress nothing); upstream reads
    # the release's count and per-layer ratios.
    "DeepseekV4ForCausalLM": {
        "num_hash_layers": CountOf("mlp_layer_types", "hash_moe"),
        "compress_ratios": ValuesOf("layer_types", "compress_rates", (("sliding_attention", 0),)),
    },
    # KimiLinearConfig spreads the release's linear_attn_config (1-based layer lists) over its own
    # fields and marks dense layers in mlp_layer_types; upstream reads the release's fields.
    "KimiLinearForCausalLM": {
        "linear_attn_config": {
            "full_attn_layers": IndicesOf("layer_types", "full_attention"),
            "kda_layers": IndicesOf("layer_types", "linear_attention"),
            "head_dim": From(("linear_head_dim",), None),
            "num_heads": From(("linear_num_heads",), None),
            "short_conv_kernel_size": From(("linear_conv_kernel_dim",), None),
        },
        "first_k_dense_replace": CountOf("mlp_layer_types", "dense"),
    },
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
# GLM-4.7-Flash), stops (EXAONE MoE, DeepSeek-V3.2, Kimi Linear: a required key; dots3-note's converter
# refuses) or aborts (dots.llm1, MiniMax-M2: no gating function).
SIGMOID_ROUTED = (
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "Dots1ForCausalLM",
    "Dots3NoteForCausalLM",
    "ExaoneMoeForCausalLM",
    "Glm4MoeLiteForCausalLM",
    "KimiLinearForCausalLM",
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


# Where a family's usual layer-count key counts something else than the blocks its tensors hold:
# the key that counts those (checked against the tensor names before the converter runs).
# HRM-Text's num_hidden_layers is its unrolled depth (cycles x stacks); each stack holds
# num_layers_per_stack blocks.
LAYER_COUNT_KEYS: dict[str, tuple[str, ...]] = {"HrmTextForCausalLM": ("num_layers_per_stack",)}


def layer_count_keys(config: dict[str, Any]) -> tuple[str, ...]:
    return next(
        (LAYER_COUNT_KEYS[a] for a in config.get("architectures") or () if a in LAYER_COUNT_KEYS),
        (),
    )


# Values llama.cpp's graph assumes whatever the file says (found by the matrix): a checkpoint
# with another value converts, but llama.cpp then computes something else than transformers.
# HF architecture -> (config fields, the first set one counting; transformers' default when
# none is saved; the value llama.cpp assumes; why).
ASSUMED_BY_LLAMA_CPP: dict[str, tuple[tuple[tuple[str, ...], Any, Any, str], ...]] = {
    "Qwen4ExpForCausalLM": (
        (
            ("output_gate_type", "hidden_act"),
            "silu",
            "sigmoid",
            "llama.cpp's qwen4exp graph gates its linear-attention output with a sigmoid; a "
            "tiny model gated otherwise measured 70% off",
        ),
    ),
}


def llama_cpp_assumptions(config: dict[str, Any]) -> list[str]:
    """Warnings for ``config`` values that llama.cpp's graph for the architecture ignores."""
    warnings = []
    for arch in config.get("architectures") or ():
        for fields, default, assumed, why in ASSUMED_BY_LLAMA_CPP.get(arch, ()):
            value = next((config[f] for f in fields if config.get(f) is not None), default)
            if value != assumed:
                warnings.append(
                    f"{fields[0]} is {value!r} but {why}: the converted file will not compute "
                    "what transformers computes"
                )
    return warnings


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


# transformers 5 saves some families' tensors under other names than the pinned converter maps
# (it maps the names of an earlier or the original release). HF architecture -> (regular
# expression over a checkpoint's tensor name, its replacement: the name upstream reads), applied
# by the upstream child to every name before the converter sees it.
TENSOR_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    # BitNet b1.58 2B4T's sub-norms as transformers names them; upstream maps only 1bitLLM's.
    "BitNetForCausalLM": (
        (r"^(model\.layers\.\d+\.self_attn)\.attn_sub_norm\.", r"\1.inner_attn_ln."),
        (r"^(model\.layers\.\d+\.mlp)\.ffn_sub_norm\.", r"\1.ffn_layernorm."),
    ),
    # DeepSeek-V4: upstream reads the original release's names (no "model." prefix, embed,
    # hc_head_*, the key/value norm as kv_norm); transformers 5 saves its own at the root.
    "DeepseekV4ForCausalLM": (
        (r"^model\.embed_tokens\.", "embed."),
        (r"^model\.hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
        (r"^model\.layers\.(\d+)\.attn\.norm\.", r"model.layers.\1.attn.kv_norm."),
        (r"^model\.", ""),
    ),
    # Hunyuan V4: transformers 5 saves the hyper-connection tensors under hc_pre (the head's
    # and each layer's) and every gate_proj as linear_gate (the release's name of the attention
    # gate only); upstream maps the release's names.
    "HYV4ForCausalLM": (
        (r"^(model\.layers\.\d+\.mlp(\.shared_experts)?)\.linear_gate\.", r"\1.gate_proj."),
        (r"^model\.hc_pre\.hc_head\.", "model.hc_head."),
        (
            r"^(model\.layers\.\d+)\.hc_pre\.(hc_attn_layer|hc_mlp_layer)\.",
            r"\1.\2.hc_pre.",
        ),
    ),
    # transformers 5 saves every Kimi Linear layer's feed-forward under block_sparse_moe, the
    # leading dense layers' too; upstream maps those under mlp, as released.
    "KimiLinearForCausalLM": (
        (
            r"^(model\.layers\.\d+)\.block_sparse_moe\.(gate_proj|up_proj|down_proj)\.",
            r"\1.mlp.\2.",
        ),
    ),
}


# Converters that read only a sentencepiece tokenizer.model, for families that transformers 5
# releases with a byte-level BPE tokenizer.json only (BitNet b1.58 2B4T: Llama 3's tokenizer).
# Where the checkpoint has no tokenizer.model, the upstream child reads tokenizer.json as BPE.
BPE_WITHOUT_SENTENCEPIECE: frozenset[str] = frozenset({"BitNetForCausalLM"})


def bpe_without_sentencepiece(config: dict[str, Any]) -> bool:
    return bool(set(config.get("architectures") or ()) & BPE_WITHOUT_SENTENCEPIECE)


# Tensor layouts upstream gets wrong for llama.cpp: HF architecture -> the names of the upstream
# child's layout functions (ggufkit/convert/_upstream_tensors.py, LAYOUTS).
TENSOR_LAYOUTS: dict[str, tuple[str, ...]] = {
    # Bamba rotates half of each head; upstream's granitehybrid converter permutes q/k over the
    # whole head for llama.cpp's NORM rope, right only where the whole head rotates.
    "BambaForCausalLM": ("partial_rotary",),
    # transformers' HY V4 rotates the rope dims by halves ("non-interleave"); upstream writes
    # them unpermuted for llama.cpp's hy_v4 graph, which rotates adjacent pairs.
    "HYV4ForCausalLM": ("mla_rope_halves",),
}


# Converter behaviour a transformers 5 checkpoint needs beyond names and layouts: HF architecture
# -> the names of the upstream child's patches (ggufkit/convert/_upstream_tensors.py, PATCHES).
CONVERTER_PATCHES: dict[str, tuple[str, ...]] = {
    # upstream writes DeepSeek-V4's routed experts only from the release's MXFP4 blocks
    "DeepseekV4ForCausalLM": ("float_routed_experts",),
    # upstream cannot unpack BitNet's released 2-bit weights (lazily) and re-rounds them wrongly
    "BitNetForCausalLM": ("bitnet_packed",),
}


def tensor_renames(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The (pattern, replacement) pairs for the architectures in ``config``, in order."""
    archs = config.get("architectures") or ()
    return [rule for arch in archs for rule in TENSOR_RENAMES.get(arch, ())]


def tensor_layouts(config: dict[str, Any]) -> list[str]:
    """The layout functions for the architectures in ``config``."""
    return _named(config, TENSOR_LAYOUTS)


def converter_patches(config: dict[str, Any]) -> list[str]:
    """The converter patches for the architectures in ``config``."""
    return _named(config, CONVERTER_PATCHES)


def _named(config: dict[str, Any], table: dict[str, tuple[str, ...]]) -> list[str]:
    archs = config.get("architectures") or ()
    return list(dict.fromkeys(name for arch in archs for name in table.get(arch, ())))
