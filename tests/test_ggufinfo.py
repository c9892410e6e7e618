"""ggufkit.formats.ggufinfo: the one GGUF reader — agrees with gguf-py, and every malformed input is a
GGUFFormatError naming the file (never IndexError/ValueError/MemoryError)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggufkit.core.errors import GGUFFormatError
from ggufkit.formats.gguf_reader import check_gguf, read_gguf
from ggufkit.formats.ggufinfo import ArraySummary, file_type_name, ggml_types

VOCAB = [f"tok{i}" for i in range(200)]


def write_gguf(path: Path, *, big_endian: bool = False, quantized: bool = False) -> Path:
    import gguf

    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_file_type(
        int(gguf.LlamaFileType.MOSTLY_Q8_0 if quantized else gguf.LlamaFileType.MOSTLY_F16)
    )
    writer.add_token_list(VOCAB)
    writer.add_token_scores([float(i) for i in range(len(VOCAB))])
    writer.add_float64("test.f64", 0.25)
    writer.add_bool("test.flag", True)
    rng = np.random.default_rng(0)
    embd = rng.standard_normal((200, 64)).astype(np.float32)
    if quantized:
        packed = gguf.quantize(embd, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("token_embd.weight", packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor("token_embd.weight", embd.astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("ggufinfo") / "small-f16.gguf")


def test_agrees_with_gguf_py(small: Path) -> None:
    import gguf

    info = read_gguf(small)
    reference = gguf.GGUFReader(str(small))
    assert info.version == 3 and info.alignment == 32 and info.byte_order == "little"
    assert info.file_size == small.stat().st_size
    assert [t.name for t in info.tensors] == [t.name for t in reference.tensors]
    for ours, theirs in zip(info.tensors, reference.tensors, strict=True):
        assert ours.file_offset == theirs.data_offset
        assert ours.n_bytes == theirs.n_bytes
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.type_name == theirs.tensor_type.name
    assert info.metadata["tokenizer.ggml.tokens"] == VOCAB
    assert info.metadata["tokenizer.ggml.scores"] == [float(i) for i in range(200)]
    assert info.metadata["test.f64"] == 0.25 and info.metadata["test.flag"] is True
    assert info.metadata_types["tokenizer.ggml.tokens"] == "array[string]"
    assert info.architecture == "llama" and info.file_type_name == "F16"
    assert info.parameter_count == 200 * 64 + 64 + 64 * 64
    assert not info.is_quantized
    # f16 matrices and an f32 norm: a little over 16 bits per weight.
    assert 16 < (info.bits_per_weight or 0) < 16.2


def test_summaries_keep_length_and_head(small: Path) -> None:
    info = check_gguf(small)
    tokens = info.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary)
    assert len(tokens) == 200 and tokens.head == ("tok0", "tok1", "tok2", "tok3")
    summary = read_gguf(small).summarized_metadata(max_items=2)["tokenizer.ggml.scores"]
    assert summary == ArraySummary("float32", 200, (0.0, 1.0))
    assert read_gguf(small, max_array_items=0).metadata["tokenizer.ggml.tokens"].head == ()
    data = read_gguf(small).to_json()
    assert data["metadata"]["tokenizer.ggml.tokens"]["length"] == 200


def test_quantized_file(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "q.gguf", quantized=True))
    assert info.is_quantized and info.file_type_name == "Q8_0"
    assert [t.name for t in info.quantized_tensors] == ["token_embd.weight"]
    assert info.tensors[0].n_bytes == 200 * 64 // 32 * 34


def test_big_endian_file_is_read_and_flagged(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "be.gguf", big_endian=True))
    assert info.byte_order == "big"
    assert info.metadata["tokenizer.ggml.tokens"][:2] == ["tok0", "tok1"]
    assert info.tensors[0].shape == (64, 200)


def test_type_tables() -> None:
    types = ggml_types()
    assert types[2].name == "Q4_0" and types[2].bits_per_weight == 4.5
    assert file_type_name(15) == "Q4_K_M" and file_type_name(0) == "F32"
    assert file_type_name(9999) is None


# --- malformed input: always GGUFFormatError, naming the file --------------------------------


def expect_format_error(path: Path, *fragments: str) -> GGUFFormatError:
    with pytest.raises(GGUFFormatError) as caught:
        read_gguf(path)
    assert str(path) in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    return caught.value


def test_missing_empty_directory_and_foreign_files(tmp_path: Path) -> None:
    expect_format_error(tmp_path / "nope.gguf", "does not exist")
    expect_format_error(tmp_path, "directory")
    (tmp_path / "empty.gguf").write_bytes(b"")
    expect_format_error(tmp_path / "empty.gguf", "not a GGUF")
    safetensors = struct.pack("<Q", 2) + b"{}" + b"\0" * 32
    (tmp_path / "model.safetensors").write_bytes(safetensors)
    error = expect_format_error(tmp_path / "model.safetensors", "not a GGUF")
    assert "ggufkit convert" in (error.hint or "")
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert "PyTorch" in (expect_format_error(tmp_path / "pytorch_model.bin").hint or "")


def test_every_truncation_is_a_format_error(small: Path, tmp_path: Path) -> None:
    blob = small.read_bytes()
    target = tmp_path / "cut.gguf"
    info = read_gguf(small)
    cuts = sorted({*range(0, info.data_offset + 64, 7), info.data_offset, len(blob) - 1})
    for cut in cuts:
        target.write_bytes(blob[:cut])
        with pytest.raises(GGUFFormatError) as caught:
            read_gguf(target)
        assert "truncated" in str(caught.value) or "not a GGUF" in str(caught.value), cut


def header(version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv(key: str, type_id: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", type_id) + payload


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (header(version=1), "version 1"),
        (header(version=7), "unsupported GGUF version 7"),
        (header(n_tensors=2**62), "claims"),
        (header(n_kv=2**63), "claims"),
        (header(n_kv=1) + kv("a.b", 9, struct.pack("<IQ", 4, 2**60)), "claims"),
        (header(n_kv=1) + kv("a.b", 8, struct.pack("<Q", 2**40)), "truncated"),
        (header(n_kv=1) + kv("a.b", 99, b""), "unknown value type 99"),
        (header(n_kv=2) + kv("a", 4, b"\1\0\0\0") + kv("a", 4, b"\1\0\0\0"), "duplicate"),
        (header(n_kv=1) + kv("general.alignment", 4, struct.pack("<I", 24)), "power of 2"),
        (header(n_kv=1) + kv("general.alignment", 10, struct.pack("<Q", 32)), "expected uint32"),
        (header(n_kv=1) + kv("", 4, b"\1\0\0\0"), "empty"),
    ],
)
def test_hostile_headers(tmp_path: Path, blob: bytes, fragment: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob + b"\0" * 64)
    expect_format_error(path, fragment)


def tensor_info(name: str, shape: tuple[int, ...], type_id: int, offset: int) -> bytes:
    out = struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(shape))
    out += b"".join(struct.pack("<Q", d) for d in shape)
    return out + struct.pack("<IQ", type_id, offset)


def with_tensors(*infos: bytes, data: int = 4096) -> bytes:
    body = header(n_tensors=len(infos)) + b"".join(infos)
    return body + b"\0" * (-len(body) % 32) + b"\0" * data


@pytest.mark.parametrize(
    ("infos", "fragment"),
    [
        ((tensor_info("a", (4, 4, 4, 4, 4), 0, 0),), "5 dimensions"),
        ((tensor_info("a", (2**40, 2**40), 0, 0),), "impossible shape"),
        ((tensor_info("a", (33,), 2, 0),), "block size"),
        ((tensor_info("a", (8,), 0, 0), tensor_info("a", (8,), 0, 32)), "duplicate tensor"),
        ((tensor_info("a", (8,), 0, 0), tensor_info("b", (8,), 0, 64)), "expected 32"),
        ((tensor_info("a", (1 << 20,), 0, 0),), "truncated"),
        ((tensor_info("a", (8,), 5000, 0),), "invalid ggml type"),
    ],
)
def test_hostile_tensor_tables(tmp_path: Path, infos: tuple[bytes, ...], fragment: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(with_tensors(*infos))
    expect_format_error(path, fragment)


def test_unknown_newer_type_is_tolerated(tmp_path: Path) -> None:
    """A type id newer than the installed gguf library: size unknown, the file still reads."""
    unknown = max(ggml_types()) + 1
    path = tmp_path / "newer.gguf"
    path.write_bytes(
        with_tensors(tensor_info("a", (64,), unknown, 0), tensor_info("b", (8,), 0, 128))
    )
    info = read_gguf(path)
    assert info.tensors[0].type_name == f"TYPE_{unknown}" and info.tensors[0].n_bytes is None
    assert info.bits_per_weight is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_corruption_never_escapes(small: Path, tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(small.read_bytes())
    header_end = read_gguf(small).data_offset
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, header_end - 1))
        blob[position] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzzed.gguf"
    path.write_bytes(bytes(blob))
    try:
        read_gguf(path)
    except GGUFFormatError as error:
        assert str(path) in str(error)
