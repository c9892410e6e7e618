"""LoRA adapters merged into their base (merge-lora, PEFT as the oracle) and refused when bad."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny
from click.testing import CliRunner
from tiny_lora import merged_state, train_lora

from ggufkit.cli import cli
from ggufkit.core.errors import AdapterError, WorkspaceError
from ggufkit.delta import merge_lora
from ggufkit.formats.safetensors import Checkpoint

pytestmark = pytest.mark.needs_torch

VARIANTS = {
    "plain": {},
    "rslora-patterns": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "use_rslora": True,
        "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"v_proj": 16},
    },
    "regex-embedding": {
        "target_modules": r".*\.(k_proj|o_proj)|model\.embed_tokens",
        "lora_alpha": 4,
    },
}


def tensors(model_dir: Path) -> dict[str, np.ndarray]:
    with Checkpoint.open(model_dir) as ckpt:
        return {name: np.array(ckpt.read(name, float32=True)) for name in ckpt.names()}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: train_lora(tiny_llama_dir, root / name, seed=i, **config)
        for i, (name, config) in enumerate(VARIANTS.items())
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merge_in_f32_is_peft_merge_and_unload(
    variant: str, adapters: dict[str, Path], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    result = merge_lora(tiny_llama_dir, adapters[variant], tmp_path / "merged", dtype="f32")
    ours, base = tensors(result.output), tensors(tiny_llama_dir)
    reference = merged_state(tiny_llama_dir, adapters[variant])
    changed = [n for n in ours if not np.array_equal(ours[n], base[n])]
    assert changed, "the adapter changed nothing: the test could not fail"
    for name, expected in reference.items():
        np.testing.assert_allclose(ours[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert set(ours) == set(base)
    record = json.loads((result.output / "ggufkit-merge.json").read_text())
    assert "lora:adapter_model.safetensors" in record["files"]
    assert record["lora"] == adapters[variant].name


@pytest.mark.parametrize(("torch_dtype", "dtype", "step"), [("float16", "f16", 2e-3), ("bfloat16", "bf16", 1.6e-2)])  # fmt: skip
def test_merge_in_half_precision_is_peft_within_rounding(
    torch_dtype: str,
    dtype: str,
    step: float,
    adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    spm_model: Path,
) -> None:
    base = tiny.make_llama(tmp_path_factory.mktemp(dtype), dtype=torch_dtype, spm_model=spm_model)
    out = merge_lora(base, adapters["rslora-patterns"], tmp_path_factory.mktemp("o") / "m")
    assert out.dtype == dtype  # the base's own dtype by default, as PEFT merges
    ours = tensors(out.output)
    reference = merged_state(base, adapters["rslora-patterns"], dtype=torch_dtype)
    unchanged = tensors(base)
    assert any(not np.array_equal(ours[n], unchanged[n]) for n in ours)
    same = sum(int(np.sum(ours[n] == reference[n])) for n in reference)
    assert same >= 0.999 * sum(v.size for v in reference.values())
    for name, expected in reference.items():
        # one rounding step at most: the float32 products may differ in their last bit at a tie
        np.testing.assert_allclose(ours[name], expected, rtol=step, atol=1e-4, err_msg=name)


def test_fan_in_fan_out_conv1d_merge_is_peft(tmp_path: Path) -> None:
    """GPT-2 stores its linear layers as Conv1D (in x out): PEFT's fan_in_fan_out."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(str(tmp_path / "gpt2"))
    adapter = train_lora(
        tmp_path / "gpt2",
        tmp_path / "adapter",
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
    )
    out = merge_lora(tmp_path / "gpt2", adapter, tmp_path / "merged", dtype="f32")
    ours, base = tensors(out.output), tensors(tmp_path / "gpt2")
    reference = merged_state(tmp_path / "gpt2", adapter)
    assert not np.array_equal(
        ours["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"]
    )
    for name, value in ours.items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_modules_to_save_and_resized_vocabulary(
    tiny_llama_dir: Path, tmp_path: Path, spm_model: Path
) -> None:
    vocab = int(json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"])
    adapter = train_lora(
        tiny_llama_dir,
        tmp_path / "adapter",
        resize_to=vocab + 8,
        modules_to_save=["embed_tokens", "lm_head", "model.norm"],
    )
    out = merge_lora(tiny_llama_dir, adapter, tmp_path / "merged", dtype="f32")
    assert out.extended == {n: (vocab, vocab + 8) for n in out.extended}
    assert set(out.extended) == {"model.embed_tokens.weight", "lm_head.weight"}
    config = json.loads((out.output / "config.json").read_text())
    assert config["vocab_size"] == vocab + 8
    ours = tensors(out.output)
    reference = merged_state(tiny_llama_dir, adapter, resize_to=vocab + 8)
    for name, expected in reference.items():
        np.testing.assert_allclose(ours[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)


def test_tied_lm_head_is_merged_into_the_embedding_as_peft_does(
    tiny_llama_tied_dir: Path, tmp_path: Path
) -> None:
    adapter = train_lora(
        tiny_llama_tied_dir, tmp_path / "adapter", target_modules=["q_proj", "lm_head"]
    )
    out = merge_lora(tiny_llama_tied_dir, adapter, tmp_path / "merged", dtype="f32")
    ours = tensors(out.output)
    assert "lm_head.weight" not in ours
    reference = merged_state(tiny_llama_tied_dir, adapter)
    embed = "model.embed_tokens.weight"
    assert not np.array_equal(ours[embed], tensors(tiny_llama_tied_dir)[embed])
    np.testing.assert_allclose(ours[embed], reference[embed], rtol=1e-6, atol=1e-7)


def test_cli_merge_lora_json(
    adapters: dict[str, Path], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        cli,
        ["merge-lora", "--base", str(tiny_llama_dir), "--adapter", str(adapters["plain"]),
         "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["style"] == "lora" and data["dtype"] == "f32"  # the tiny base is float32
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.model").is_file()


# --- bad input: a clear error, nothing written -------------------------------------------------


def _broken(adapter: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
        ({"use_dora": True}, "DoRA"),
        ({"r": 0}, "not a positive rank"),
        ({"target_modules": ["k_proj"]}, "does not name"),
        ({"rank_pattern": {"q_proj": 8}}, "do not have the rank r=8"),
    ],
)
def test_unsupported_or_inconsistent_adapters_are_refused(
    changes: dict[str, object],
    message: str,
    adapters: dict[str, Path],
    tiny_llama_dir: Path,
    tmp_path: Path,
) -> None:
    broken = _broken(adapters["plain"], tmp_path, **changes)
    with pytest.raises(AdapterError, match=message):
        merge_lora(tiny_llama_dir, broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_config_is_refused(
    adapters: dict[str, Path], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    broken = _broken(adapters["plain"], tmp_path)
    (broken / "adapter_config.json").unlink()
    result = CliRunner().invoke(
        cli, ["merge-lora", "--base", str(tiny_llama_dir), "--adapter", str(broken), "-o",
              str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "adapter_config.json is missing" in result.output
    assert "not a PEFT adapter" in result.output
    assert not (tmp_path / "out").exists()


def test_adapter_for_another_base_is_refused(
    adapters: dict[str, Path], tiny_llama_gqa_dir: Path, tiny_bloom_dir: Path, tmp_path: Path
) -> None:
    # the GQA model has smaller k/v projections: the v_proj update does not fit
    with pytest.raises(AdapterError, match=r"v_proj.*does not fit|does not fit.*v_proj"):
        merge_lora(tiny_llama_gqa_dir, adapters["plain"], tmp_path / "out")
    with pytest.raises(AdapterError, match="trained on a LlamaForCausalLM"):
        merge_lora(tiny_bloom_dir, adapters["plain"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- workspaces and batch plans take an adapter like a delta -----------------------------------


def test_workspace_converts_with_an_adapter_and_tracks_it(
    adapters: dict[str, Path],
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ggufkit.formats.gguf_reader import read_gguf
    from ggufkit.workspace import Workspace, init_workspace
    from ggufkit.workspace.manifest import Manifest

    shutil.copytree(tiny_llama_dir, tmp_path / "base")
    shutil.copytree(adapters["plain"], tmp_path / "my-lora")
    monkeypatch.chdir(tmp_path)
    config = init_workspace(tmp_path, "base", name="tuned")
    config.write_text(config.read_text().replace('# lora = "my-lora"', 'lora = "my-lora"'))
    workspace = Workspace.require()
    assert workspace.config.lora == "my-lora"
    first = workspace.convert()
    assert not first.skipped
    assert read_gguf(first.output).metadata["ggufkit.source.lora"] == "my-lora"
    record = Manifest.load(workspace.manifest_path).get(workspace.f16_path)
    assert record is not None and [i["role"] for i in record["inputs"]] == ["model", "lora"]
    assert "--lora" in record["command"]
    assert workspace.convert().skipped
    adapter_config = tmp_path / "my-lora" / "adapter_config.json"
    adapter_config.write_text(
        adapter_config.read_text().replace('"lora_alpha": 8', '"lora_alpha": 9')
    )
    assert not workspace.convert().skipped

    (tmp_path / "my-lora" / "adapter_config.json").unlink()
    with pytest.raises(WorkspaceError, match="not a PEFT adapter directory"):
        workspace.convert()


def test_batch_plan_takes_an_adapter(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from ggufkit.workspace.batch.plan import parse_plan

    (tmp_path / "my-lora").mkdir()
    model = {"source": str(tiny_llama_dir), "lora": "my-lora"}
    plan = parse_plan({"types": ["q4_0"], "models": [model]}, tmp_path / "batch.toml")
    assert plan.models[0].lora == str((tmp_path / "my-lora").absolute())
    with pytest.raises(WorkspaceError, match="lora 'gone' is not a directory"):
        parse_plan(
            {"types": ["q4_0"], "models": [{**model, "lora": "gone"}]}, tmp_path / "batch.toml"
        )


def test_embedded_adapter_merges_as_peft_and_learned_milton(tmp_path: Path) -> None:
    from ggufkit.data import ADAPTER_BASES, embedded_adapter, embedded_model, training_record

    name = "tiny-llama-milton-lora"
    adapter, base = embedded_adapter(name), embedded_model(ADAPTER_BASES[name])
    figures = training_record()[name]
    assert figures["milton_heldout_ppl"] < figures["base_milton_heldout_ppl"]
    out = merge_lora(base, adapter, tmp_path / "merged")
    assert out.dtype == "f16"
    ours, reference = tensors(out.output), merged_state(base, adapter, dtype="float16")
    same = sum(int(np.sum(ours[n] == reference[n])) for n in reference)
    assert same >= 0.999 * sum(v.size for v in reference.values())
    for name_, expected in reference.items():
        np.testing.assert_allclose(ours[name_], expected, rtol=2e-3, atol=1e-4, err_msg=name_)
