"""BLOOM conversion: layout, metadata, padded vocab, parity with transformers and with upstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import tiny

from ggufkit.convert import ConvertResult, convert
from ggufkit.convert.arch.bloom import BLOOM_TRAINING_CONTEXT, BloomConverter, qkv_row_order
from ggufkit.convert.vocab_bpe import KEY_PRE_DETAIL, KEY_PRE_SOURCE
from ggufkit.core.errors import ConfigError, ConversionError, UsageError
from ggufkit.formats.safetensors import Checkpoint
from ggufkit.inference.parity import hf_token_ids, logit_parity, tokenizer_parity

N_HEAD, N_EMBD = 4, 64  # tiny.make_bloom's defaults


def field(reader: gguf.GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def tensors(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {t.name: t for t in reader.tensors}


def test_qkv_row_order_regroups_heads() -> None:
    n_head, head_dim = 3, 2
    order = qkv_row_order(n_head, head_dim)
    # source rows are labelled (head, part, d); the output wants all q, then all k, then all v
    labels = [(h, p, d) for h in range(n_head) for p in range(3) for d in range(head_dim)]
    regrouped = [labels[i] for i in order]
    assert regrouped == [
        (h, p, d) for p in range(3) for h in range(n_head) for d in range(head_dim)
    ]


# --- conversion of the tiny BLOOM (locally trained BLOOM-style tokenizer, 600 -> 640 rows) -------


@pytest.fixture(scope="module")
def bloom_f16(tiny_bloom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertResult:
    return convert(tiny_bloom_dir, tmp_path_factory.mktemp("bloom16") / "b.gguf", outtype="f16")


@pytest.fixture(scope="module")
def bloom_f32(tiny_bloom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertResult:
    return convert(tiny_bloom_dir, tmp_path_factory.mktemp("bloom32") / "b.gguf", outtype="f32")


@pytest.mark.needs_torch
def test_metadata_and_padded_vocab(bloom_f16: ConvertResult, tiny_bloom_dir: Path) -> None:
    reader = gguf.GGUFReader(bloom_f16.output)
    assert (bloom_f16.gguf_arch, field(reader, "general.architecture")) == ("bloom", "bloom")
    assert field(reader, "bloom.context_length") == 512  # seq_length, not n_embed
    assert field(reader, "bloom.embedding_length") == N_EMBD
    assert field(reader, "bloom.feed_forward_length") == 4 * N_EMBD
    assert field(reader, "bloom.block_count") == 2
    assert field(reader, "bloom.attention.head_count") == N_HEAD
    assert field(reader, "bloom.attention.head_count_kv") == N_HEAD
    assert field(reader, "bloom.attention.layer_norm_epsilon") == pytest.approx(1e-5)

    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "bloom"
    assert field(reader, KEY_PRE_SOURCE) == "tokenizer.json"
    assert "bloom" in field(reader, KEY_PRE_DETAIL)
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 640
    assert tokens[600:] == [f"[PAD{i}]" for i in range(600, 640)]
    assert set(types[600:]) == {gguf.TokenType.UNUSED}
    assert types[:4] == [gguf.TokenType.CONTROL] * 4
    tokenizer_json = json.loads((tiny_bloom_dir / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [" ".join(pair) for pair in tokenizer_json["model"]["merges"]]
    assert field(reader, "tokenizer.ggml.merges") == merges
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2

    names = set(tensors(reader))
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd.weight
    assert {"token_embd_norm.weight", "token_embd_norm.bias", "blk.1.attn_qkv.bias"} <= names
    assert tensors(reader)["token_embd.weight"].data.shape == (640, N_EMBD)
    assert any("'bloom'" in note for note in bloom_f16.notes)
    assert any("padded from 600" in note for note in bloom_f16.notes)


@pytest.mark.needs_torch
def test_fused_qkv_regrouped_exactly(bloom_f32: ConvertResult, tiny_bloom_dir: Path) -> None:
    reader = gguf.GGUFReader(bloom_f32.output)
    ours = tensors(reader)
    head_dim = N_EMBD // N_HEAD
    with Checkpoint.open(tiny_bloom_dir) as checkpoint:
        fused = {  # copies: the views must not outlive the memory map
            kind: np.array(
                checkpoint.read(f"transformer.h.1.self_attention.query_key_value.{kind}")
            )
            for kind in ("weight", "bias")
        }
    for kind, hf in fused.items():
        per_head = hf.reshape(N_HEAD, 3, head_dim, *hf.shape[1:])
        got = np.asarray(ours[f"blk.1.attn_qkv.{kind}"].data)
        for part in range(3):  # q, k, v as transformers' BloomAttention splits them
            want = per_head[:, part].reshape(N_EMBD, *hf.shape[1:])
            np.testing.assert_array_equal(got[part * N_EMBD : (part + 1) * N_EMBD], want)


@pytest.mark.needs_torch
def test_pre_tokenizer_option(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    out = convert(tiny_bloom_dir, tmp_path / "o.gguf", outtype="f32", pre_tokenizer="gpt-2")
    reader = gguf.GGUFReader(out.output)
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, KEY_PRE_SOURCE) == "option"
    with pytest.raises(UsageError, match="not a pre-tokenizer llama.cpp knows"):
        convert(tiny_bloom_dir, tmp_path / "bad.gguf", pre_tokenizer="bloomz")
    assert not (tmp_path / "bad.gguf").exists()
    assert not list(tmp_path.glob("bad.gguf*.partial"))


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_wrong_pre_tokenizer_breaks_tokenizer_parity(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    """The choice matters: GPT-2's split on a BLOOM-style vocab tokenizes differently."""
    out = convert(tiny_bloom_dir, tmp_path / "g.gguf", outtype="f32", pre_tokenizer="gpt-2")
    assert not tokenizer_parity(out.output, tiny_bloom_dir, parity_text()).equal


@pytest.mark.needs_torch
def test_cli_reports_the_choice_and_takes_the_option(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ggufkit.cli import cli

    runner = CliRunner()
    out = tmp_path / "cli.gguf"
    done = runner.invoke(cli, ["convert", str(tiny_bloom_dir), "-o", str(out), "--outtype", "f32"])
    assert done.exit_code == 0, done.output
    assert "pre-tokenizer 'bloom'" in done.output and "padded from 600" in done.output
    bad = runner.invoke(
        cli,
        ["convert", str(tiny_bloom_dir), "-o", str(tmp_path / "x.gguf"), "--pre-tokenizer", "nope"],
    )
    assert bad.exit_code == 2
    assert "not a pre-tokenizer llama.cpp knows" in bad.output


# --- config and checkpoint variants, checked on the converter itself -------------------------


def variant(
    src: Path, dst: Path, *, config: dict[str, Any] | None = None, **tensor_edits: Any
) -> Path:
    """A copy of ``src`` with config keys changed (None removes) and tensors renamed/added."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name not in ("config.json", "model.safetensors"):
            (dst / item.name).symlink_to(item)
    settings = json.loads((src / "config.json").read_text(encoding="utf-8"))
    for key, value in (config or {}).items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    (dst / "config.json").write_text(json.dumps(settings), encoding="utf-8")
    if not tensor_edits:
        (dst / "model.safetensors").symlink_to(src / "model.safetensors")
        return dst
    from safetensors.numpy import save_file

    with Checkpoint.open(src) as checkpoint:
        arrays = {name: np.array(checkpoint.read(name)) for name in checkpoint.names()}
    if tensor_edits.get("strip_prefix"):
        arrays = {name.removeprefix("transformer."): array for name, array in arrays.items()}
    if tensor_edits.get("lm_head"):
        arrays["lm_head.weight"] = arrays[next(n for n in arrays if "word_embeddings.weight" in n)]
    save_file(arrays, str(dst / "model.safetensors"))
    return dst


def converter(model_dir: Path) -> BloomConverter:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return BloomConverter(model_dir, config, Checkpoint.open(model_dir), outtype="f16")


@pytest.mark.needs_torch
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"seq_length": None, "n_positions": 1024}, 1024),
        ({"seq_length": None}, BLOOM_TRAINING_CONTEXT),
    ],
)
def test_context_length(
    tiny_bloom_dir: Path, tmp_path: Path, changes: dict[str, Any], expected: int
) -> None:
    conv = converter(variant(tiny_bloom_dir, tmp_path / "m", config=changes))
    assert conv.context_length() == expected
    assert any("training length" in note for note in conv.notes) == (
        expected == BLOOM_TRAINING_CONTEXT
    )


@pytest.mark.needs_torch
def test_unsupported_config_is_refused_early(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    post = variant(
        tiny_bloom_dir, tmp_path / "post", config={"apply_residual_connection_post_layernorm": True}
    )
    with pytest.raises(ConversionError, match="apply_residual_connection_post_layernorm"):
        converter(post)
    heads = variant(tiny_bloom_dir, tmp_path / "heads", config={"n_head": 5})
    with pytest.raises(ConfigError, match="not a multiple of 5 heads"):
        converter(heads)


@pytest.mark.needs_torch
def test_unprefixed_names_and_lm_head(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    reference = {p.name: p.shape for p in converter(tiny_bloom_dir).plan_tensors()}
    # BloomModel-style checkpoints (bigscience/bloom-560m) carry no "transformer." prefix, and
    # older ones store the tied lm_head too.
    bare = converter(variant(tiny_bloom_dir, tmp_path / "bare", strip_prefix=True, lm_head=True))
    plans = bare.plan_tensors()
    bare.validate(plans)
    assert {p.name: p.shape for p in plans} == reference
    untied = converter(
        variant(
            tiny_bloom_dir, tmp_path / "untied", config={"tie_word_embeddings": False}, lm_head=True
        )
    )
    assert "output.weight" in {p.name for p in untied.plan_tensors()}


# --- parity through llama.cpp ----------------------------------------------------------------


def parity_text() -> str:
    # the corpus plus special tokens inside running text
    return tiny.CORPUS.read_text(encoding="utf-8") + "\nend</s><s> next <pad>\n  </s>"


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
@pytest.mark.parametrize(("outtype", "tolerance"), [("f16", 0.005), ("f32", 0.0005)])
def test_logit_parity(
    request: pytest.FixtureRequest, tiny_bloom_dir: Path, outtype: str, tolerance: float
) -> None:
    result: ConvertResult = request.getfixturevalue(f"bloom_{outtype}")
    ids = hf_token_ids(tiny_bloom_dir, tiny.CORPUS.read_text(encoding="utf-8"))[:128]
    report = logit_parity(result.output, tiny_bloom_dir, ids)
    assert report.n_positions == 128
    assert report.rel_diff <= tolerance, report.summary()
    limit = tolerance * report.max_abs_logit
    assert sum(m > limit for m in report.ref_margin) > 64  # the argmax check has teeth
    assert report.decisive_mismatches(limit) == [], report.summary()


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_tokenizer_parity_on_corpus(bloom_f16: ConvertResult, tiny_bloom_dir: Path) -> None:
    text = parity_text()
    assert len(text.encode("utf-8")) >= 10_000
    report = tokenizer_parity(bloom_f16.output, tiny_bloom_dir, text)
    assert report.equal, report.summary()
    assert report.reference_ids[-1] == 2  # the trailing </s> became the special token


# --- against upstream ------------------------------------------------------------------------

# Runs the pinned converter with its hash lookup answered by NAME: the way to make upstream
# convert a locally trained tokenizer at all, so that its output can be compared with ours.
_TOLD_UPSTREAM = """
import runpy, sys
source, name = sys.argv[1], sys.argv[2]
sys.path[:0] = [source, source + "/gguf-py"]
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: name
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(source + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def upstream_told(model_dir: Path, out: Path, pre: str, *, outtype: str = "f16") -> Path:
    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    command = [sys.executable, "-c", _TOLD_UPSTREAM, str(source), pre, str(model_dir)]
    command += ["--outfile", str(out), "--outtype", outtype]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def gpt2_style_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2-style pre-tokenizer (ByteLevel regex), bf16 weights: the other common shape."""
    return tiny.make_bloom(
        tmp_path_factory.mktemp("bloom-gpt2"), style="gpt2", dtype="bfloat16", seed=5
    )


@pytest.mark.slow
@pytest.mark.needs_torch
def test_upstream_fails_on_local_bloom_tokenizer(
    tiny_bloom_dir: Path, bloom_f16: ConvertResult, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="BPE pre-tokenizer was not recognized"):
        tiny.upstream_convert(tiny_bloom_dir, tmp_path / "upstream.gguf")
    assert not (tmp_path / "upstream.gguf").exists()
    assert bloom_f16.output.is_file()  # and ours converted the same checkpoint


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.parametrize("style", ["bloom", "gpt2"])
def test_byte_identical_to_upstream(
    request: pytest.FixtureRequest, style: str, tmp_path: Path
) -> None:
    model_dir: Path = request.getfixturevalue(
        "tiny_bloom_dir" if style == "bloom" else "gpt2_style_bf16"
    )
    ours = convert(model_dir, tmp_path / "ours.gguf", outtype="f16")
    pre = field(gguf.GGUFReader(ours.output), "tokenizer.ggml.pre")
    assert pre == ("bloom" if style == "bloom" else "gpt-2")
    theirs_path = upstream_told(model_dir, tmp_path / "upstream.gguf", pre)
    mine, theirs = gguf.GGUFReader(ours.output), gguf.GGUFReader(theirs_path)

    assert set(tensors(mine)) == set(tensors(theirs))
    for name, tensor in tensors(theirs).items():
        other = tensors(mine)[name]
        assert (other.tensor_type, list(other.shape)) == (tensor.tensor_type, list(tensor.shape)), (
            name
        )
        assert other.data.tobytes() == tensor.data.tobytes(), name
    for key in theirs.fields:
        if key.startswith(("tokenizer.", "bloom.")):
            assert field(mine, key) == field(theirs, key), key


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_gpt2_style_tokenizer_parity(gpt2_style_bf16: Path, tmp_path: Path) -> None:
    result = convert(gpt2_style_bf16, tmp_path / "g.gguf", outtype="f16")
    report = tokenizer_parity(result.output, gpt2_style_bf16, parity_text())
    assert report.equal, report.summary()
