"""The upstream engine's provenance, and a delta or LoRA adapter fused on an upstream architecture.

The pinned converter reads one directory, so ggufkit merges first (a temporary directory beside
the output). PEFT in transformers is the oracle for the fused LoRA; the file converted from the
fine-tuned checkpoint itself is the oracle for the fused delta; hashlib is the oracle for the
recorded sha256s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from tiny_lora import llama_logits, peft_logits, train_lora
from tiny_more import make_glm4

from ggufkit.convert import convert
from ggufkit.delta import make_delta
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.inference.parity import compare_logits
from ggufkit.inference.verify import UNQUANTIZED_MAX_REL_DIFF

pytestmark = [pytest.mark.needs_torch, pytest.mark.needs_llamacpp, pytest.mark.slow]

IDS = [1, *range(5, 69)]


def agrees(reference: np.ndarray, got: np.ndarray) -> bool:
    report = compare_logits(reference, got)
    return report.rel_diff <= UNQUANTIZED_MAX_REL_DIFF and report.argmax_agreement == 1.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(gguf: Path) -> dict[str, str]:
    metadata = read_gguf(gguf).metadata
    return dict(
        zip(metadata["ggufkit.source.files"], metadata["ggufkit.source.sha256"], strict=True)
    )


@pytest.fixture(scope="module")
def glm4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glm4(tmp_path_factory.mktemp("glm4") / "glm4")


def test_upstream_output_records_version_engine_and_source_hashes(
    glm4: Path, tmp_path: Path
) -> None:
    result = convert(glm4, tmp_path / "glm4-F16.gguf")
    assert result.engine == "upstream"
    metadata = read_gguf(result.output).metadata
    assert metadata["ggufkit.engine"] == "upstream"
    assert metadata["ggufkit.version"]
    files = recorded(result.output)
    assert files == {"model.safetensors": sha256(glm4 / "model.safetensors")}
    assert "0" * 64 not in files.values()  # every placeholder patched


def test_fused_lora_on_an_upstream_architecture_matches_peft(glm4: Path, tmp_path: Path) -> None:
    adapter = train_lora(glm4, tmp_path / "adapter")
    reference = peft_logits(glm4, adapter, IDS)
    out_dir = tmp_path / "out"  # not there yet: made as for any output
    result = convert(glm4, out_dir / "fused.gguf", lora=adapter)
    assert result.engine == "upstream"
    assert sorted(out_dir.iterdir()) == [result.output]  # the merged copy is gone
    metadata = read_gguf(result.output).metadata
    assert metadata["ggufkit.source.lora"] == "adapter"
    files = recorded(result.output)
    assert files["model.safetensors"] == sha256(glm4 / "model.safetensors")
    assert files["lora:adapter_model.safetensors"] == sha256(adapter / "adapter_model.safetensors")
    assert agrees(reference, llama_logits(result.output, IDS))
    plain = convert(glm4, tmp_path / "plain.gguf").output
    assert not agrees(reference, llama_logits(plain, IDS)), "the adapter changes nothing"


def test_fused_delta_on_an_upstream_architecture_equals_the_tuned_model(
    glm4: Path, tmp_path: Path
) -> None:
    tuned = make_glm4(tmp_path / "tuned", seed=1)
    delta = make_delta(glm4, tuned, tmp_path / "delta", dtype="f32")
    fused = convert(delta, tmp_path / "fused.gguf", delta_base=glm4)
    direct = convert(tuned, tmp_path / "direct.gguf")
    assert fused.engine == "upstream"
    assert read_gguf(fused.output).metadata["ggufkit.source.delta_base"] == "glm4"
    assert "base:model.safetensors" in recorded(fused.output)
    got, want = read_gguf(fused.output).tensors, read_gguf(direct.output).tensors
    assert [t.name for t in got] == [t.name for t in want]
    assert agrees(llama_logits(direct.output, IDS), llama_logits(fused.output, IDS))
    assert not agrees(llama_logits(convert(glm4, tmp_path / "base.gguf").output, IDS),
                      llama_logits(fused.output, IDS))  # fmt: skip


def test_the_placeholders_are_patched_in_place_and_a_broken_header_is_refused(
    tmp_path: Path,
) -> None:
    import gguf

    from ggufkit.convert.provenance import patch_source_hashes
    from ggufkit.core.errors import GGUFFormatError

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "d"])  # walked over, not read
    writer.add_array("ggufkit.source.sha256", ["0" * 64, "0" * 64])
    writer.add_string("ggufkit.version", "x")
    writer.add_tensor("t", np.arange(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    size = path.stat().st_size
    hashes = [sha256(path), "f" * 64]
    patch_source_hashes(path, hashes)
    assert read_gguf(path).metadata["ggufkit.source.sha256"] == hashes
    assert path.stat().st_size == size
    with pytest.raises(GGUFFormatError, match="no ggufkit.source.sha256 of 3 entries"):
        patch_source_hashes(path, [*hashes, "e" * 64])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GGUFFormatError, match="unreadable header"):
        patch_source_hashes(path, hashes)
