"""Legacy .bin -> GGUF: reading, tensor values, the upstream anchor, the tokenizer rule, bad files.

The legacy files come from ``legacy_writer`` (written from the published format facts); parity
through llama.cpp against transformers is in ``test_legacy_parity.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import legacy_writer as lw
import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.convert.legacy.reader import read_legacy
from ggufkit.core.errors import LegacyFormatError, TokenizerError, UsageError

CASES = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]


@pytest.fixture(scope="module")
def llama_f32_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("legacy-src") / "f32.gguf"
    convert(tiny_llama_dir, out, outtype="f32")
    return out


@pytest.fixture(scope="module")
def legacy_llama(
    llama_f32_gguf: Path, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    folder = tmp_path_factory.mktemp("legacy-llama")

    def make(container: str, version: int, kind: str, **kw: Any) -> tuple[Path, dict[str, Any]]:
        tag = "-f16src" if kw.get("from_f16") else ""
        path = folder / f"{container}{version}-{kind}{tag}.bin"
        return lw.write_llama(
            path, llama_f32_gguf, tiny_llama_dir, container=container, version=version, kind=kind,
            **kw,
        )  # fmt: skip

    return make


def gguf_tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def values(tensor: Any) -> np.ndarray:
    data = np.asarray(tensor.data)
    if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return data.astype(np.float32)
    return gguf.quants.dequantize(data, tensor.tensor_type)


def field(path: Path, key: str) -> Any:
    return gguf.GGUFReader(path).fields[key].contents()


# --- reading and values ------------------------------------------------------------------------


@pytest.mark.needs_torch
@pytest.mark.parametrize(("container", "version"), CASES)
def test_reads_every_llama_container(legacy_llama: Any, container: str, version: int) -> None:
    path, stored = legacy_llama(container, version, "f16")
    legacy = read_legacy(path)
    assert (legacy.container, legacy.version, legacy.family) == (container, version, "llama")
    assert legacy.hparams["n_embd"] == 128 and legacy.hparams["ftype"] == 1
    assert [t.name for t in legacy.tensors] == list(stored)
    assert (legacy.vocab[1][1] is None) == (container == "ggml")  # scores from GGMF on


@pytest.mark.needs_torch
@pytest.mark.parametrize(
    ("container", "version", "kind", "from_f16", "action"),
    [
        ("ggjt", 3, "q4_0", False, "kept"),
        ("ggjt", 3, "q8_0", False, "kept"),
        ("ggjt", 1, "q4_0", False, "dequantized"),
        ("ggjt", 2, "q4_0", False, "dequantized"),
        ("ggjt", 2, "q8_0", False, "dequantized"),
        ("ggmf", 1, "q4_0", True, "repacked"),
        ("ggjt", 2, "q4_0", True, "repacked"),
        ("ggjt", 1, "q8_0", True, "dequantized"),  # amax / 127 is no f16 even from f16 input
        ("ggjt", 1, "q4_1", False, "dequantized"),
        ("ggjt", 2, "q4_1", False, "dequantized"),
        ("ggjt", 3, "q4_1", False, "kept"),
        ("ggjt", 2, "q5_0", False, "kept"),
        ("ggjt", 3, "q5_1", False, "kept"),
    ],
)
def test_quantized_values(
    legacy_llama: Any,
    tiny_llama_dir: Path,
    tmp_path: Path,
    container: str,
    version: int,
    kind: str,
    from_f16: bool,
    action: str,
) -> None:
    path, stored = legacy_llama(container, version, kind, from_f16=from_f16)
    result = convert(path, tmp_path / "out.gguf", tokenizer=tiny_llama_dir)
    assert any(f"{kind}: 16 tensors {action}" in note for note in result.notes), result.notes
    out = gguf_tensors(result.output)
    want_type = gguf.GGMLQuantizationType.F16 if action == "dequantized" else None
    for name, tensor in out.items():
        legacy_name = lw.llama_name(name)
        expected = stored[legacy_name]
        if expected.ndim == 2 and want_type is not None:
            assert tensor.tensor_type == want_type, name
            expected = expected.astype(np.float16).astype(np.float32)
        elif expected.ndim == 2:
            assert tensor.tensor_type.name.lower() == kind, name
        assert np.array_equal(values(tensor).reshape(expected.shape), expected), name


# --- the upstream anchor ------------------------------------------------------------------------


def upstream_ggml_convert(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
    command = [sys.executable, str(source / "convert_llama_ggml_to_gguf.py"), "-i", str(src)]
    return subprocess.run(
        [*command, "-o", str(out)], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.parametrize(("container", "version"), CASES)
def test_tensors_identical_to_upstream(
    legacy_llama: Any, tiny_llama_dir: Path, tmp_path: Path, container: str, version: int
) -> None:
    path, _ = legacy_llama(container, version, "f16")
    theirs = tmp_path / "upstream.gguf"
    done = upstream_ggml_convert(path, theirs)
    assert done.returncode == 0, done.stderr[-2000:]
    # without --tokenizer: a GGML file has no scores, so ggufkit refuses; the others convert
    tokenizer = None
    if container == "ggml":
        with pytest.raises(TokenizerError, match="pass `tokenizer`"):
            convert(path, tmp_path / "ours.gguf")
        assert not (tmp_path / "ours.gguf").exists()
        tokenizer = tiny_llama_dir
    ours = convert(path, tmp_path / "ours.gguf", tokenizer=tokenizer).output
    mine, their = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    assert [t.name for t in mine.tensors] == [t.name for t in their.tensors]
    for a, b in zip(mine.tensors, their.tensors, strict=True):
        assert a.tensor_type == b.tensor_type, a.name
        raw_a = mine.data[a.data_offset : a.data_offset + a.n_bytes]
        raw_b = their.data[b.data_offset : b.data_offset + a.n_bytes]
        assert raw_a.tobytes() == raw_b.tobytes(), a.name
        # The pinned script hands gguf-py uint8 data with element shapes, which it reads as
        # byte shapes: its row length is ours divided by the type's bytes per element.
        block, size = gguf.GGML_QUANT_SIZES[a.tensor_type]
        assert int(b.shape[0]) * size // block == int(a.shape[0]), a.name
        assert list(b.shape[1:]) == list(a.shape[1:]), a.name
    if tokenizer is None:  # the vocabulary rebuilt the same way
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            assert mine.fields[key].contents() == their.fields[key].contents(), key
    for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
        assert field(ours, f"llama.{key}") == field(theirs, f"llama.{key}"), key


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.parametrize("kind", ["q4_0", "q8_0"])
def test_upstream_fails_on_ggjt3_quantized(legacy_llama: Any, tmp_path: Path, kind: str) -> None:
    path, _ = legacy_llama("ggjt", 3, kind)
    done = upstream_ggml_convert(path, tmp_path / "upstream.gguf")
    assert done.returncode != 0
    assert "is not a multiple of" in done.stderr  # gguf-py's byte-shape reading, as above
    assert convert(path, tmp_path / "ours.gguf", tokenizer=None).output.is_file()


# --- tokenizer rule -----------------------------------------------------------------------------


@pytest.mark.needs_torch
def test_bloomz_needs_the_tokenizer(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    path, _ = lw.write_bloomz(tmp_path / "b.bin", tiny_bloom_dir, kind="f16")
    with pytest.raises(TokenizerError, match="`tokenizer`") as err:
        convert(path, tmp_path / "b.gguf")
    assert "lossy" in str(err.value)
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "b.gguf.partial").exists()


@pytest.mark.needs_torch
def test_wrong_tokenizer_is_refused(
    tiny_bloom_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    import tiny

    other = tmp_path_factory.mktemp("other-tok")
    tiny.train_bpe_tokenizer(other, vocab_size=500, style="gpt2")
    path, _ = lw.write_bloomz(tmp_path / "b.bin", tiny_bloom_dir, kind="f16")
    with pytest.raises(TokenizerError, match="does not match"):
        convert(path, tmp_path / "b.gguf", tokenizer=other)
    assert not (tmp_path / "b.gguf").exists()


@pytest.mark.needs_torch
def test_context_length_option_and_default(legacy_llama: Any, tmp_path: Path) -> None:
    path, _ = legacy_llama("ggjt", 3, "f16")
    default = convert(path, tmp_path / "a.gguf")
    assert field(default.output, "llama.context_length") == 2048
    assert any("`context_length`" in note for note in default.notes)
    given = convert(path, tmp_path / "b.gguf", context_length=4096)
    assert field(given.output, "llama.context_length") == 4096
    with pytest.raises(UsageError, match="legacy"):
        convert(tmp_path, tmp_path / "c.gguf", context_length=4096)


# --- bad files ---------------------------------------------------------------------------------


@pytest.mark.needs_torch
@pytest.mark.parametrize("cut", [6, 40, 9000, -7])
def test_truncated_file_is_a_clean_error(legacy_llama: Any, tmp_path: Path, cut: int) -> None:
    path, _ = legacy_llama("ggjt", 3, "f16")
    data = path.read_bytes()
    bad = tmp_path / "cut.bin"
    bad.write_bytes(data[:cut])
    result = CliRunner().invoke(cli, ["convert", str(bad), "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "truncated" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.bin"]


@pytest.mark.needs_torch
@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (4, 7, "version 7"),  # GGJT v7 never existed
        (12, -5, "implausible n_embd"),
        ("tensor", 9, "n_dims 9"),
        ("type", 4, "q4_2"),  # removed in May 2023
    ],
)
def test_corrupt_file_is_a_clean_error(
    legacy_llama: Any, tmp_path: Path, offset: int | str, value: int, message: str
) -> None:
    path, _ = legacy_llama("ggjt", 3, "f16")
    data = bytearray(path.read_bytes())
    first = read_legacy(path).tensors[0]
    # the first tensor's header: n_dims, name length, type, dims, then its name
    start = data.index(first.name.encode()) - 4 * len(first.dims) - 12
    where = {"tensor": start, "type": start + 8}.get(str(offset), offset)
    assert isinstance(where, int)
    data[where : where + 4] = int(value).to_bytes(4, "little", signed=True)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    with pytest.raises(LegacyFormatError, match=message):
        convert(bad, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.partial").exists()


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.needs_torch
def test_cli_inspect_and_convert(legacy_llama: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    path, _ = legacy_llama("ggjt", 1, "q4_0")
    runner = CliRunner()
    shown = runner.invoke(cli, ["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "GGJT v1" in shown.output and "q4_0" in shown.output and "n_embd=128" in shown.output
    assert "(optional: its sentencepiece vocabulary with scores is exact)" in shown.output
    as_json = json.loads(runner.invoke(cli, ["inspect", str(path), "--json"]).output)
    assert as_json["tensor_types"] == {"f32": 5, "q4_0": 16}

    refused = runner.invoke(cli, ["convert", str(path), "--outtype", "q8_0"])
    assert refused.exit_code == 2 and "--outtype does not apply" in refused.output

    out = tmp_path / "out.gguf"
    done = runner.invoke(
        cli, ["convert", str(path), "--tokenizer", str(tiny_llama_dir), "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert "dequantized to f16" in done.output and "legacy engine" in done.output
    assert field(out, "general.architecture") == "llama"
    assert field(out, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_repack_matches_gguf_quants(kind: str) -> None:
    """Today's layouts as gguf.quants reads them: the repacked blocks hold the decoded values."""
    from ggufkit.convert.legacy.blocks import Blocks, dequantize
    from ggufkit.convert.legacy.reader import TYPE_NAMES
    from ggufkit.convert.legacy.tensors import repack

    type_id = next(i for i, name in TYPE_NAMES.items() if name == kind)
    rng = np.random.default_rng(3)
    n = 64
    d = rng.normal(size=n).astype(np.float16).astype(np.float32)
    m = rng.normal(size=n).astype(np.float16).astype(np.float32) if kind == "q4_1" else None
    if kind == "q8_0":
        q = rng.integers(-128, 128, size=(n, 32)).astype(np.int8)
    else:
        q = rng.integers(0, 16, size=(n, 32)).astype(np.uint8)
    blocks = Blocks(d, q, m)
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    got = gguf.quants.dequantize(repack(blocks, type_id), qtype).reshape(-1)
    assert np.array_equal(got, dequantize(blocks, type_id))


_BLOOM_HF = {
    "token_embd": "transformer.word_embeddings",
    "token_embd_norm": "transformer.word_embeddings_layernorm",
    "output_norm": "transformer.ln_f",
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attention.query_key_value",
    "attn_output": "self_attention.dense",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.dense_h_to_4h",
    "ffn_down": "mlp.dense_4h_to_h",
}


@pytest.mark.needs_torch
@pytest.mark.parametrize(("kind", "action"), [("q4_0", "repacked"), ("q4_1", "dequantized")])
def test_bloomz_quantized_values(
    tiny_bloom_dir: Path, tmp_path: Path, kind: str, action: str
) -> None:
    from ggufkit.convert.arch.bloom import qkv_row_order

    path, stored = lw.write_bloomz(tmp_path / "b.bin", tiny_bloom_dir, kind=kind)
    result = convert(path, tmp_path / "b.gguf", tokenizer=tiny_bloom_dir)
    # 9 2-D weights: the tied output (a copy of the embedding in the file) is dropped
    assert any(f"{kind}: 9 tensors {action}" in note for note in result.notes), result.notes
    assert any("copy of the tied embedding" in note for note in result.notes)
    for name, tensor in gguf_tensors(result.output).items():
        parts = name.split(".")
        if parts[0] == "blk":
            hf = f"transformer.h.{parts[1]}.{_BLOOM_HF[parts[2]]}.{parts[3]}"
        else:
            hf = f"{_BLOOM_HF[parts[0]]}.{parts[1]}"
        expected = stored[hf]
        if "attn_qkv" in name:
            expected = expected[qkv_row_order(4, 16)]
        if action == "dequantized" and expected.ndim == 2:
            expected = expected.astype(np.float16).astype(np.float32)
        assert np.array_equal(values(tensor).reshape(expected.shape), expected), name


@pytest.mark.needs_torch
def test_tokenizer_from_a_hub_repo_id(
    tiny_bloom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubserver import serving

    files = {p.name: p.read_bytes() for p in tiny_bloom_dir.iterdir() if p.is_file()}
    path, _ = lw.write_bloomz(tmp_path / "b.bin", tiny_bloom_dir, kind="f16")
    with serving(monkeypatch, Path(os.environ["HF_HOME"])) as hub:
        hub.add_repo("acme/tiny-bloom", {"main": files})
        result = convert(path, tmp_path / "b.gguf", tokenizer="acme/tiny-bloom")
        fetched = (len(hub.gets("tokenizer.json")), len(hub.gets("model.safetensors")))
    assert field(result.output, "tokenizer.ggml.pre") == "bloom"
    assert fetched == (1, 0)  # the tokenizer files, not the weights


@pytest.mark.needs_torch
@pytest.mark.parametrize(("change", "message"), [("drop", "lacks"), ("twice", "repeats")])
def test_incomplete_model_is_refused(
    legacy_llama: Any, tmp_path: Path, change: str, message: str
) -> None:
    path, _ = legacy_llama("ggjt", 3, "f16")
    legacy = read_legacy(path)
    tensors = [
        (t.name, t.type_id, t.shape, b"".join(c.tobytes() for c in legacy.chunks(t, 1 << 20)))
        for t in legacy.tensors
    ]
    victim = next(i for i, t in enumerate(tensors) if t[0] == "layers.1.feed_forward.w3.weight")
    if change == "drop":
        del tensors[victim]
    else:
        tensors.append(tensors[victim])
    bad = lw.write_file(
        tmp_path / "bad.bin", container="ggjt", version=3, hparams=list(legacy.hparams.values()),
        vocab=[(text, score or 0.0) for text, score in legacy.vocab], tensors=tensors,
    )  # fmt: skip
    with pytest.raises(LegacyFormatError, match=message):
        convert(bad, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
