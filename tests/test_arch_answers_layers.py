"""ggufkit's answers for configs that transformers 5 saves per layer kind (arch_answers), checked
against transformers' own reading of the released field names: a config built from the released
names and saved by transformers must be answered with those very values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufkit.convert.arch_answers import hparam_answers, hparam_renames

# dots3-note's released names for its sliding layers' geometry (tiny, each kind its own)
DOTS3_RELEASED = {
    "swa_num_attention_heads": 2,
    "swa_num_key_value_heads": 2,
    "swa_q_lora_rank": 32,  # the same as the indexed layers': not saved per layer
    "swa_kv_lora_rank": 48,
    "swa_head_dim": 32,
    "swa_qk_nope_head_dim": 24,
    "swa_qk_rope_head_dim": 8,
    "swa_v_head_dim": 16,
    "sliding_window_size": 32,
}
DOTS3_SIZES = {
    "num_hidden_layers": 2,
    "layer_types": ["indexed_attention", "sliding_attention"],
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 24,
}


def _saved(config: object, tmp_path: Path, arch: str) -> dict:
    config.save_pretrained(str(tmp_path))  # type: ignore[attr-defined]
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    return {**saved, "architectures": [arch]}


@pytest.mark.needs_torch
def test_dots3_answers_are_the_released_swa_fields(tmp_path: Path) -> None:
    from transformers import Dots3NoteTextConfig

    config = Dots3NoteTextConfig(**DOTS3_SIZES, **DOTS3_RELEASED, swa_rope_theta=5000.0)
    saved = _saved(config, tmp_path, "Dots3NoteForCausalLM")
    assert not any(key.startswith("swa_") for key in saved)  # transformers 5 moved them
    answers = hparam_answers(saved)
    assert {key: answers.get(key) for key in DOTS3_RELEASED} == DOTS3_RELEASED
    assert answers["apply_mla_qkv_lora_rescale"] is True  # transformers always rescales
    indexed_theta = saved["rope_parameters"]["indexed_attention"]["rope_theta"]
    assert answers["rope_parameters"] == {"rope_theta": indexed_theta}
    assert answers["scoring_func"] == "sigmoid"
    assert answers["first_k_dense_replace"] == saved["mlp_layer_types"].count("dense") == 1
    # a released config, which has the swa_* names, keeps its own
    assert not any(key.startswith("swa_") for key in hparam_answers({**saved, **DOTS3_RELEASED}))


def test_a_layer_kind_answer_without_that_kind_is_no_answer() -> None:
    dense = {"architectures": ["Dots3NoteForCausalLM"], "num_hidden_layers": 1}
    dense |= {"layer_types": ["indexed_attention"], "qk_nope_head_dim": 16}
    answers = hparam_answers(dense)
    assert not any(key.startswith("swa_") for key in answers)
    assert "rope_parameters" not in answers  # no rope_parameters to read a base from


@pytest.mark.needs_torch
def test_qwen4exp_layer_kinds_in_the_released_names(tmp_path: Path) -> None:
    from transformers import Qwen4ExpTextConfig

    released = ["linear_attention", "full_attention"]  # the released config's names
    config = Qwen4ExpTextConfig(num_hidden_layers=2, layer_types=released)
    saved = _saved(config, tmp_path, "Qwen4ExpForCausalLM")
    assert saved["layer_types"] == ["linear_attention", "indexed_attention"]
    assert hparam_renames(saved) == {"layer_types": released}
    assert hparam_renames({**saved, "layer_types": released}) == {}


@pytest.mark.needs_torch
@pytest.mark.parametrize(("gate", "warned"), [(None, True), ("silu", True), ("sigmoid", False)])
def test_a_qwen4exp_gate_llama_cpp_ignores_is_warned_of(
    gate: str | None, warned: bool, tmp_path: Path
) -> None:
    from transformers import Qwen4ExpConfig

    from ggufkit.convert.arch_answers import llama_cpp_assumptions

    saved = _saved(Qwen4ExpConfig(output_gate_type=gate), tmp_path, "Qwen4ExpForCausalLM")
    # transformers computes with output_gate_type, else hidden_act (silu by default)
    warnings = llama_cpp_assumptions(saved)
    assert bool(warnings) is warned
    if warned:
        assert "sigmoid" in warnings[0] and repr(gate or "silu") in warnings[0]


def test_hrm_text_blocks_are_counted_per_stack(tmp_path: Path) -> None:
    """HRM-Text's num_hidden_layers is its unrolled depth; its tensors hold num_layers_per_stack
    blocks per stack. The layer check before upstream runs must count those (and still refuse a
    stack size the tensors lack)."""
    from ggufkit.convert.arch_answers import layer_count_keys
    from ggufkit.core.errors import ConversionError
    from ggufkit.formats.hfconfig import check_layers_for_upstream

    config = {
        "architectures": ["HrmTextForCausalLM"],
        "num_hidden_layers": 16,
        "num_layers_per_stack": 2,
        "vocab_size": 64,
    }
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    names = [f"model.{s}_module.layers.{i}.mlp.down_proj.weight" for s in "HL" for i in range(2)]
    check_layers_for_upstream(tmp_path, names, layer_count_keys(config))
    with pytest.raises(ConversionError, match="16 layers"):
        check_layers_for_upstream(tmp_path, names)  # the usual key: the unrolled depth
    with pytest.raises(ConversionError, match="3 layers"):
        config["num_layers_per_stack"] = 3
        (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
        check_layers_for_upstream(tmp_path, names, layer_count_keys(config))


def test_computed_answers_of_an_unexpected_config_are_no_answer() -> None:
    """A config.json from elsewhere: a layer kind without a rate, a table or layer entry of the
    wrong type gives no answer (the converter then says what it lacks), never a crash."""
    from ggufkit.convert.arch_computed import OfLayerKind, ValuesOf

    rates = ValuesOf("layer_types", "compress_rates", (("sliding_attention", 0),))
    good = {"layer_types": ["sliding_attention", "full"], "compress_rates": {"full": 4}}
    assert rates.read(good) == [0, 4]
    assert rates.read({**good, "layer_types": ["sliding_attention", "weird"]}) is None
    assert rates.read({**good, "compress_rates": [4]}) is None
    assert rates.read({**good, "layer_types": "full"}) is None
    kind = OfLayerKind("sliding_attention", "head_dim")
    config = {"layer_types": ["full", "sliding_attention"], "head_dim": 8}
    assert kind.read({**config, "per_layer_config": {"1": {"head_dim": 4}}}) == 4
    assert kind.read({**config, "per_layer_config": {"1": 7}}) == 8
