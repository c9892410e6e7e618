"""`ggufkit inspect`: summary, metadata, tensors, JSON, and clear errors for broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.formats.gguf_reader import read_gguf

VOCAB = [f"tok{i}" for i in range(300)]


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid GGUF written with gguf-py: a long string array, an f16 and an f32 tensor."""
    import gguf

    path = tmp_path_factory.mktemp("inspect") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Inspect Me")
    writer.add_context_length(64)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_token_list(VOCAB)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((300, 32)).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["inspect", *args])
    return result.exit_code, result.stdout, result.stderr


def test_text_summary(small_gguf: Path) -> None:
    code, out, _ = invoke(str(small_gguf))
    assert code == 0, out
    assert "architecture:  llama" in out
    assert "file type:     F16" in out
    assert f"parameters:    {300 * 32 + 32:,}" in out
    assert "tensors:       2 (F16 ×1, F32 ×1)" in out
    # The vocabulary is summarised, not printed in full.
    assert "tokenizer.ggml.tokens (array[string]) = [string × 300: 'tok0'" in out
    assert "tok299" not in out
    assert "token_embd.weight" not in out  # tensors only with --tensors


def test_tensor_listing(small_gguf: Path) -> None:
    code, out, _ = invoke(str(small_gguf), "--tensors")
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| token_embd.weight")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells == ["token_embd.weight", "F16", "32×300", f"{300 * 32 * 2:,}"]


def test_json_matches_reader(small_gguf: Path) -> None:
    code, out, _ = invoke(str(small_gguf), "--json", "--tensors")
    assert code == 0, out
    data = json.loads(out)
    info = read_gguf(small_gguf)
    assert data["tensor_count"] == 2
    assert data["file_size"] == small_gguf.stat().st_size
    assert data["bits_per_weight"] == pytest.approx(info.bits_per_weight)
    assert data["parameter_count"] == info.parameter_count
    assert data["tensor_types"] == {"F16": 1, "F32": 1}
    assert data["metadata"]["tokenizer.ggml.tokens"]["length"] == 300
    assert data["metadata"]["general.name"] == "Inspect Me"
    assert [t["name"] for t in data["tensors"]] == ["token_embd.weight", "output_norm.weight"]
    without = json.loads(invoke(str(small_gguf), "--json")[1])
    assert "tensors" not in without and without["tensor_count"] == 2


@pytest.mark.parametrize("keep", [3, 20, 200, -40])
def test_truncated_file_is_a_clear_error(small_gguf: Path, tmp_path: Path, keep: int) -> None:
    data = small_gguf.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[:keep])
    code, out, err = invoke(str(broken))
    assert code == 1
    assert "Traceback" not in out + err
    assert err.startswith("Error: ")
    assert str(broken) in err
    assert "truncated" in err or "shorter than" in err or "not a GGUF" in err


def test_not_gguf_is_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text('{"this": "is json"}' * 4)
    code, out, err = invoke(str(text))
    assert code == 1
    assert "Traceback" not in out + err
    assert "is not a GGUF file" in err
    assert "hint:" in err


def test_missing_file_and_directory(tmp_path: Path) -> None:
    code, _, err = invoke(str(tmp_path / "absent.gguf"))
    assert code == 1 and "does not exist" in err
    code, _, err = invoke(str(tmp_path))
    assert code == 1 and "is a directory" in err


# --- ggufkit verify -------------------------------------------------------------------------


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_verify_passes_on_a_faithful_conversion(
    tiny_llama_f16_gguf: Path, tiny_llama_gqa_dir: Path, corpus_path: Path
) -> None:
    args = ["verify", str(tiny_llama_f16_gguf), "--against", str(tiny_llama_gqa_dir)]
    args += ["--text", str(corpus_path), "--positions", "64"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] and data["problems"] == []
    assert data["type"] == "F16" and not data["quantized"]
    assert data["logits"]["n_positions"] == 64
    assert data["logits"]["rel_diff"] < data["max_rel_diff"] == 0.01
    assert data["logits"]["decisive_mismatches"] == []
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0
    assert "verdict:    PASS" in text.stdout
    assert f"{data['logits']['max_abs_diff']:.4g}" in text.stdout


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_verify_fails_against_other_weights(
    tiny_llama_f16_gguf: Path, tiny_llama_gqa_dir: Path, corpus_path: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_llama_gqa_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 1.5
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    args = ["verify", str(tiny_llama_f16_gguf), "--against", str(other), "--text", str(corpus_path)]
    result = CliRunner().invoke(cli, [*args, "--positions", "32"])
    assert result.exit_code == 1
    assert "verdict:    FAIL" in result.stdout
    assert "above the 1% limit" in result.stderr and "Traceback" not in result.stderr


def test_verify_needs_a_checkpoint_directory(small_gguf: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", str(small_gguf), "--against", str(tmp_path)])
    assert result.exit_code == 2
    assert "no config.json" in result.stderr
