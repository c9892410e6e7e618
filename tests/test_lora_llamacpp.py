"""LoRA in llama.cpp: the adapter GGUF applied at run time and the fused GGUF agree with PEFT.

PEFT in transformers (base + adapter, unmerged) is the oracle; llama.cpp's logits must be within
verify's f16 tolerance with the same argmax, and a perturbed adapter must fail the same check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_lora import llama_logits, peft_logits, train_lora

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.convert.lora_adapter import convert_lora_adapter
from ggufkit.core.errors import AdapterError
from ggufkit.formats.gguf_lora import check_lora_fits
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.inference.parity import compare_logits
from ggufkit.inference.verify import UNQUANTIZED_MAX_REL_DIFF

pytestmark = [pytest.mark.needs_torch, pytest.mark.needs_llamacpp, pytest.mark.slow]

IDS = [1, *range(5, 69)]
LLAMA_VARIANTS = {
    "plain": {},
    "rslora-patterns": {
        "target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
        "use_rslora": True,
        "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"v_proj": 16},
    },
}


def agrees(reference: np.ndarray, got: np.ndarray) -> bool:
    report = compare_logits(reference, got)
    return report.rel_diff <= UNQUANTIZED_MAX_REL_DIFF and report.argmax_agreement == 1.0


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    return convert(tiny_llama_dir, tmp_path_factory.mktemp("base") / "base.gguf").output


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_adapter_gguf_and_fused_gguf_match_peft(
    variant: str, tiny_llama_dir: Path, base_gguf: Path, tmp_path: Path
) -> None:
    adapter = train_lora(tiny_llama_dir, tmp_path / "adapter", **LLAMA_VARIANTS[variant])
    reference = peft_logits(tiny_llama_dir, adapter, IDS)
    assert not agrees(reference, llama_logits(base_gguf, IDS)), "the adapter changes nothing"

    result = CliRunner().invoke(
        cli,
        ["convert-lora", str(adapter), "--base", str(tiny_llama_dir), "-o",
         str(tmp_path / "lora.gguf")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lora_gguf = tmp_path / "lora.gguf"
    metadata = read_gguf(lora_gguf).metadata
    assert "lora:adapter_model.safetensors" in metadata["ggufkit.source.files"]
    assert "model.safetensors" in metadata["ggufkit.source.files"]
    assert agrees(reference, llama_logits(base_gguf, IDS, lora_gguf))

    fused = convert(tiny_llama_dir, tmp_path / "fused.gguf", lora=adapter).output
    assert read_gguf(fused).metadata["ggufkit.source.lora"] == "adapter"
    assert agrees(reference, llama_logits(fused, IDS))


def test_perturbed_adapter_fails(tiny_llama_dir: Path, base_gguf: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    adapter = train_lora(tiny_llama_dir, tmp_path / "adapter")
    reference = peft_logits(tiny_llama_dir, adapter, IDS)
    perturbed = tmp_path / "perturbed"
    shutil.copytree(adapter, perturbed)
    weights = load_file(perturbed / "adapter_model.safetensors")
    name = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    weights[name] = weights[name] * np.float32(-3.0)
    save_file(weights, str(perturbed / "adapter_model.safetensors"))
    lora_gguf = convert_lora_adapter(perturbed, tiny_llama_dir, tmp_path / "bad.gguf").output
    assert not agrees(reference, llama_logits(base_gguf, IDS, lora_gguf))
    fused = convert(tiny_llama_dir, tmp_path / "fused.gguf", lora=perturbed).output
    assert not agrees(reference, llama_logits(fused, IDS))


def test_bloom_adapter_matches_peft(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    adapter = train_lora(
        tiny_bloom_dir,
        tmp_path / "adapter",
        target_modules=["query_key_value", "dense_4h_to_h"],
    )
    ids = [1, *range(40, 100)]
    reference = peft_logits(tiny_bloom_dir, adapter, ids)
    base = convert(tiny_bloom_dir, tmp_path / "base.gguf").output
    assert not agrees(reference, llama_logits(base, ids))
    lora_gguf = convert_lora_adapter(adapter, tiny_bloom_dir, tmp_path / "lora.gguf").output
    assert agrees(reference, llama_logits(base, ids, lora_gguf))
    fused = convert(tiny_bloom_dir, tmp_path / "fused.gguf", lora=adapter).output
    assert agrees(reference, llama_logits(fused, ids))


def test_what_a_llamacpp_adapter_cannot_carry_is_refused(
    tiny_llama_dir: Path,
    tiny_llama_tied_dir: Path,
    tiny_bloom_dir: Path,
    base_gguf: Path,
    tmp_path: Path,
) -> None:
    tied = train_lora(tiny_llama_tied_dir, tmp_path / "tied", target_modules=["q_proj", "lm_head"])
    with pytest.raises(AdapterError, match="ties to its input embeddings") as refused:
        convert_lora_adapter(tied, tiny_llama_tied_dir, tmp_path / "tied.gguf")
    assert "merge-lora" in (refused.value.hint or "")
    saved = train_lora(tiny_llama_dir, tmp_path / "saved", modules_to_save=["model.norm"])
    with pytest.raises(AdapterError, match="modules_to_save"):
        convert_lora_adapter(saved, tiny_llama_dir, tmp_path / "saved.gguf")
    vocab = 808
    resized = train_lora(
        tiny_llama_dir, tmp_path / "resized", resize_to=vocab, modules_to_save=["embed_tokens"]
    )
    with pytest.raises(AdapterError, match="resizes the vocabulary"):
        convert(tiny_llama_dir, tmp_path / "resized.gguf", lora=resized)
    assert not list(tmp_path.glob("*.gguf*"))

    # an adapter GGUF given to another model: refused before llama.cpp loads it (no crash)
    plain = train_lora(tiny_llama_dir, tmp_path / "plain")
    lora_gguf = convert_lora_adapter(plain, tiny_llama_dir, tmp_path / "plain.gguf").output
    bloom = convert(tiny_bloom_dir, tmp_path / "bloom.gguf").output
    with pytest.raises(AdapterError, match="for 'llama' models"):
        llama_logits(bloom, IDS, lora_gguf)
    with pytest.raises(AdapterError, match="not a llama.cpp LoRA adapter"):
        check_lora_fits(bloom, base_gguf)


@pytest.fixture(scope="module")
def plain(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> tuple[Path, Path, Path]:
    """A plain adapter, its LoRA GGUF and the fused GGUF."""
    root = tmp_path_factory.mktemp("plain")
    adapter = train_lora(tiny_llama_dir, root / "adapter", seed=5)
    lora_gguf = convert_lora_adapter(adapter, tiny_llama_dir, root / "lora.gguf").output
    fused = convert(tiny_llama_dir, root / "fused.gguf", lora=adapter).output
    return adapter, lora_gguf, fused


def test_verify_run_and_eval_take_lora(
    plain: tuple[Path, Path, Path],
    tiny_llama_dir: Path,
    base_gguf: Path,
    tiny_bloom_dir: Path,
    tmp_path: Path,
) -> None:
    adapter, lora_gguf, fused = plain
    runner = CliRunner()
    against = ["--against", str(tiny_llama_dir), "--against-adapter", str(adapter)]
    for args in (
        [str(base_gguf), "--lora", str(lora_gguf), *against],
        [str(fused), *against],
    ):
        result = runner.invoke(cli, ["verify", *args, "--positions", "48", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["passed"]
    # without the adapter on the llama.cpp side, PEFT's logits are not the base's
    result = runner.invoke(cli, ["verify", str(base_gguf), *against, "--positions", "48"])
    assert result.exit_code == 1 and "FAIL" in result.output

    run = ["run", str(base_gguf), "--lora", str(lora_gguf), "-p", "The", "-n", "4", "--json"]
    result = runner.invoke(cli, [*run, "--temp", "0", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] >= 1
    bloom = convert(tiny_bloom_dir, tmp_path / "bloom.gguf").output
    result = runner.invoke(cli, ["run", str(bloom), "--lora", str(lora_gguf), "-p", "The"])
    assert result.exit_code == 1 and "for 'llama' models" in result.output

    def ppl(*args: str) -> float:
        result = runner.invoke(
            cli, ["eval", *args, "--chunks", "2", "--ctx", "64", "--no-speed", "--json"]
        )
        assert result.exit_code == 0, result.output
        return float(json.loads(result.stdout)["models"][0]["ppl"])

    with_lora, merged, alone = (
        ppl(str(base_gguf), "--lora", str(lora_gguf)),
        ppl(str(fused)),
        ppl(str(base_gguf)),
    )
    assert abs(with_lora - merged) < 0.01 * merged
    assert abs(with_lora - alone) > 0.01 * alone


def test_embedded_adapter_three_routes_agree_with_peft(tmp_path: Path) -> None:
    from ggufkit.data import ADAPTER_BASES, embedded_adapter, embedded_model, milton_corpus

    adapter = embedded_adapter("tiny-llama-milton-lora")
    base = embedded_model(ADAPTER_BASES["tiny-llama-milton-lora"])
    base_gguf = convert(base, tmp_path / "base.gguf").output
    lora_gguf = convert_lora_adapter(adapter, base, tmp_path / "lora.gguf").output
    fused = convert(base, tmp_path / "fused.gguf", lora=adapter).output
    against = ["--against", str(base), "--against-adapter", str(adapter)]
    text = ["--text", str(milton_corpus()), "--positions", "64", "--json"]
    for args in ([str(base_gguf), "--lora", str(lora_gguf)], [str(fused)]):
        result = CliRunner().invoke(cli, ["verify", *args, *against, *text])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["verify", str(base_gguf), *against, *text])
    assert result.exit_code == 1
