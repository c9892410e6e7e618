"""Converted legacy files run right in llama.cpp: logits and tokens against transformers.

bloomz.cpp files of the tiny BLOOM (f32, f16, q4_0) go through the CLI with --tokenizer, as a
user would run ``ggufkit convert ggml-model-f16.bin --tokenizer ./phoenix -o phoenix-f16.gguf``;
their tensors must equal a native convert of the same checkpoint. LLaMA GGJT (and GGML) files of
the tiny LLaMA go the same way, and without --tokenizer where the vocabulary is exact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gguf
import legacy_writer as lw
import numpy as np
import pytest
import tiny
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.inference.parity import hf_token_ids, logit_parity, tokenizer_parity

pytestmark = [pytest.mark.needs_torch, pytest.mark.needs_llamacpp]

F16_TOL, F32_TOL = 0.005, 0.0005  # max |Δlogit| / max |logit|, as for native conversions
SPECIAL_TAIL = "</s><s></s>"


def cli_convert(src: Path, out: Path, *extra: str) -> Path:
    done = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), *extra])
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def bloomz(tiny_bloom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """kind -> (GGUF converted from the bloomz.cpp file, the values that file stored)."""
    folder = tmp_path_factory.mktemp("bloomz")
    made = {}
    for kind in ("f32", "f16", "q4_0"):
        src, stored = lw.write_bloomz(folder / f"ggml-model-{kind}.bin", tiny_bloom_dir, kind=kind)
        out = cli_convert(src, folder / f"bloomz-{kind}.gguf", "--tokenizer", str(tiny_bloom_dir))
        made[kind] = (out, stored)
    return made


def bloom_ids(model_dir: Path) -> list[int]:
    return hf_token_ids(model_dir, tiny.CORPUS.read_text(encoding="utf-8"))[:128]


def bloom_text() -> str:
    return tiny.CORPUS.read_text(encoding="utf-8") + "\nend</s><s> next <pad>\n  </s>"


@pytest.mark.parametrize(("kind", "tol"), [("f32", F32_TOL), ("f16", F16_TOL)])
def test_bloomz_logit_parity(
    bloomz: dict[str, Any], tiny_bloom_dir: Path, kind: str, tol: float
) -> None:
    report = logit_parity(bloomz[kind][0], tiny_bloom_dir, bloom_ids(tiny_bloom_dir))
    assert report.rel_diff <= tol, report.summary()
    assert sum(m > tol * report.max_abs_logit for m in report.ref_margin) > 64
    assert report.decisive_mismatches(tol * report.max_abs_logit) == [], report.summary()


def test_bloomz_q4_0_parity(bloomz: dict[str, Any], tiny_bloom_dir: Path, tmp_path: Path) -> None:
    """The q4_0 file's own values put back into transformers are the reference: what is left is
    llama.cpp's arithmetic (it rounds activations to 8 bits for q4_0 products)."""
    import torch
    from transformers import AutoModelForCausalLM

    out, stored = bloomz["q4_0"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir), dtype=torch.float32)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stored.items()}
    model.load_state_dict(state, strict=False)
    model.save_pretrained(str(tmp_path / "q4-values"))
    ids = bloom_ids(tiny_bloom_dir)
    report = logit_parity(out, tmp_path / "q4-values", ids)
    assert report.rel_diff <= 0.03, report.summary()  # measured 0.4%
    original = logit_parity(out, tiny_bloom_dir, ids)
    assert original.rel_diff > report.rel_diff  # the reference above carries the q4 rounding
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.Q4_0  # repacked


def test_bloomz_tokenizer_parity(bloomz: dict[str, Any], tiny_bloom_dir: Path) -> None:
    report = tokenizer_parity(bloomz["f16"][0], tiny_bloom_dir, bloom_text())
    assert report.equal, report.summary()


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_bloomz_tensors_match_native(
    bloomz: dict[str, Any], tiny_bloom_dir: Path, tmp_path: Path, kind: str
) -> None:
    native = convert(tiny_bloom_dir, tmp_path / "native.gguf", outtype=kind).output
    ours = {t.name: t for t in gguf.GGUFReader(bloomz[kind][0]).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(native).tensors}
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        mine = ours[name]
        assert (mine.tensor_type, list(mine.shape)) == (tensor.tensor_type, list(tensor.shape))
        assert mine.data.tobytes() == tensor.data.tobytes(), name
    for key in ("bloom.embedding_length", "bloom.context_length", "tokenizer.ggml.tokens"):
        assert (
            gguf.GGUFReader(bloomz[kind][0]).fields[key].contents()
            == gguf.GGUFReader(native).fields[key].contents()
        ), key


# --- LLaMA -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_legacy(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("legacy-llama-parity")
    f32 = convert(tiny_llama_dir, folder / "f32.gguf", outtype="f32").output

    def make(container: str, version: int, kind: str) -> tuple[Path, dict[str, np.ndarray]]:
        return lw.write_llama(
            folder / f"ggml-model-{container}{version}-{kind}.bin", f32, tiny_llama_dir,
            container=container, version=version, kind=kind,
        )  # fmt: skip

    return make


_LLAMA_HF = {
    "tok_embeddings": "model.embed_tokens",
    "norm": "model.norm",
    "output": "lm_head",
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "attention_norm": "input_layernorm",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "ffn_norm": "post_attention_layernorm",
}


def llama_with_values(model_dir: Path, stored: dict[str, np.ndarray], out: Path) -> Path:
    """The checkpoint with the legacy file's own values, q/k rows back in HF's rotate-half order."""
    import torch
    from transformers import AutoModelForCausalLM

    from ggufkit.convert.arch.llama import rotary_row_order

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    state = {}
    for name, array in stored.items():
        parts = name.split(".")
        if parts[0] == "layers":
            hf = f"model.layers.{parts[1]}.{_LLAMA_HF['.'.join(parts[2:-1])]}.weight"
        else:
            hf = f"{_LLAMA_HF[parts[0]]}.weight"
        if name.endswith(("wq.weight", "wk.weight")):
            heads = n_head if "wq" in name else n_kv
            unpermuted = np.empty_like(array)
            unpermuted[rotary_row_order(array.shape[0], heads)] = array
            array = unpermuted
        state[hf] = torch.from_numpy(np.ascontiguousarray(array))
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(out))
    return out


def llama_ids(model_dir: Path) -> list[int]:
    vocab = int(tiny.read_config(model_dir)["vocab_size"])  # type: ignore[call-overload]
    return [int(i) for i in np.random.default_rng(7).integers(3, vocab, 128)]


@pytest.mark.parametrize(
    ("container", "version", "kind", "tol"),
    [
        ("ggjt", 3, "f16", F16_TOL),
        ("ggml", 0, "f16", F16_TOL),
        # quantized: against the checkpoint holding the file's own values (what is left is
        # llama.cpp rounding activations to 8 bits for quantized products)
        ("ggjt", 3, "q8_0", 0.03),  # measured 1.7%
        ("ggjt", 3, "q4_0", 0.03),  # measured 1.8%
        ("ggjt", 1, "q4_0", F16_TOL),  # dequantized to f16
    ],
)
def test_llama_logit_and_tokenizer_parity(
    llama_legacy: Any,
    tiny_llama_dir: Path,
    corpus_path: Path,
    tmp_path: Path,
    container: str,
    version: int,
    kind: str,
    tol: float,
) -> None:
    src, stored = llama_legacy(container, version, kind)
    out = cli_convert(src, tmp_path / "out.gguf", "--tokenizer", str(tiny_llama_dir))
    reference = tiny_llama_dir
    if kind != "f16":
        reference = llama_with_values(tiny_llama_dir, stored, tmp_path / "values")
    report = logit_parity(out, reference, llama_ids(tiny_llama_dir))
    assert report.rel_diff <= tol, report.summary()
    assert report.decisive_mismatches(tol * report.max_abs_logit) == [], report.summary()
    text = corpus_path.read_text(encoding="utf-8") + SPECIAL_TAIL
    assert tokenizer_parity(out, tiny_llama_dir, text).equal


def test_llama_rebuilt_vocab_tokenizes_like_sentencepiece(
    llama_legacy: Any, tiny_llama_dir: Path, corpus_path: Path, tmp_path: Path
) -> None:
    """GGJT carries sentencepiece scores: without --tokenizer the tokens still match HF's.

    The file does not record whether BOS is added; llama.cpp's default for a sentencepiece
    vocabulary (as in 2023) adds it, while this tiny tokenizer's config does not.
    """
    src, _ = llama_legacy("ggjt", 3, "f16")
    lonely = tmp_path / "alone"
    lonely.mkdir()
    moved = Path(shutil.copy(src, lonely / src.name))
    out = cli_convert(moved, tmp_path / "out.gguf")
    text = corpus_path.read_text(encoding="utf-8") + SPECIAL_TAIL
    report = tokenizer_parity(out, tiny_llama_dir, text)
    assert report.gguf_ids[0] == 1 and report.reference_ids[0] != 1
    assert report.gguf_ids[1:] == report.reference_ids, report.summary()
