"""Fuzzing the readers of untrusted files: they raise only ggufkit's own errors.

Bounded here (GGUFKIT_FUZZ_EXAMPLES examples per target, default 300); `make fuzz` runs longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggufkit.core.errors import GGUFKitError
from ggufkit.formats.safetensors import Checkpoint, read_safetensors_header

EXAMPLES = int(os.environ.get("GGUFKIT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("GGUFKIT_FUZZ_RANDOM") is None,
)


def valid_safetensors() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return save(
        {
            "a.weight": rng.standard_normal((4, 8)).astype(np.float16),
            "b.bias": rng.standard_normal(8).astype(np.float32),
            "c.ids": np.arange(3, dtype=np.int64),
        }
    )


VALID = valid_safetensors()


def _read_everything(path: Path) -> None:
    header = read_safetensors_header(path)
    with Checkpoint([path]) as checkpoint:
        for name in header:
            checkpoint.read(
                name, float32=checkpoint.info(name).dtype in ("F16", "F32", "BF16")
            ).sum()


def _check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with contextlib.suppress(GGUFKitError):
        _read_everything(path)


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    _check(tmp_path / "x.safetensors", data)


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=len(VALID) - 1),
    replacement=st.binary(min_size=1, max_size=8),
    truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=len(VALID))),
)
def test_mutated_valid_file(
    tmp_path: Path, position: int, replacement: bytes, truncate: int | None
) -> None:
    data = VALID[:position] + replacement + VALID[position + len(replacement) :]
    if truncate is not None:
        data = data[:truncate]
    _check(tmp_path / "x.safetensors", data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["w", "__metadata__", "x"]),
        st.fixed_dictionaries(
            {},
            optional={
                "dtype": st.sampled_from(["F16", "F32", "BF16", "I64", "Q4", 3]),
                "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
                "data_offsets": st.lists(st.integers(-5, 2**62), max_size=3) | json_values,
            },
        )
        | json_values,
        max_size=3,
    ),
    body=st.binary(max_size=64),
)
def test_lying_headers(tmp_path: Path, header: dict[str, object], body: bytes) -> None:
    raw = json.dumps(header).encode()
    _check(tmp_path / "x.safetensors", struct.pack("<Q", len(raw)) + raw + body)


def test_the_valid_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(VALID)
    _read_everything(path)
    assert set(read_safetensors_header(path)) == {"a.weight", "b.bias", "c.ids"}


@pytest.mark.parametrize("cut", [0, 7, 8, 20, len(VALID) - 1])
def test_truncations_are_named_errors(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(VALID[:cut])
    with pytest.raises(GGUFKitError, match="cut.safetensors"):
        read_safetensors_header(path)


# --- GGUF: the reading path behind inspect, quantize and eval validation -----------------------


def valid_gguf() -> bytes:
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("fuzz")
        writer.add_context_length(128)
        writer.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
        writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
        rng = np.random.default_rng(0)
        writer.add_tensor("token_embd.weight", rng.standard_normal((5, 32)).astype(np.float16))
        writer.add_tensor(
            "blk.0.attn_q.weight",
            gguf.quantize(
                rng.standard_normal((32, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
            ),
            raw_dtype=gguf.GGMLQuantizationType.Q8_0,
        )
        writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


VALID_GGUF = valid_gguf()


def _check_gguf(path: Path, data: bytes) -> None:
    from ggufkit.formats.gguf_inspect import inspect_json
    from ggufkit.formats.gguf_reader import check_gguf, read_gguf

    path.write_bytes(data)
    try:
        info = read_gguf(path)
        inspect_json(info)
        check_gguf(path)
    except GGUFKitError:
        pass


def test_the_valid_gguf_reads(tmp_path: Path) -> None:
    from ggufkit.formats.gguf_reader import read_gguf

    path = tmp_path / "ok.gguf"
    path.write_bytes(VALID_GGUF)
    info = read_gguf(path)
    assert len(info.tensors) == 3 and info.is_quantized


@FUZZ
@given(data=st.binary(max_size=256))
def test_gguf_random_bytes(tmp_path: Path, data: bytes) -> None:
    _check_gguf(tmp_path / "x.gguf", b"GGUF" + data)


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=len(VALID_GGUF) - 1),
    replacement=st.binary(min_size=1, max_size=8),
    truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=len(VALID_GGUF))),
)
def test_gguf_mutated_valid_file(
    tmp_path: Path, position: int, replacement: bytes, truncate: int | None
) -> None:
    data = VALID_GGUF[:position] + replacement + VALID_GGUF[position + len(replacement) :]
    if truncate is not None:
        data = data[:truncate]
    _check_gguf(tmp_path / "x.gguf", data)


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=400),
    value=st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1]),
)
def test_gguf_lying_counts_and_lengths(tmp_path: Path, position: int, value: int) -> None:
    # Overwrite an 8-byte field anywhere in the header with a huge count/length/offset.
    data = VALID_GGUF[:position] + struct.pack("<Q", value) + VALID_GGUF[position + 8 :]
    _check_gguf(tmp_path / "x.gguf", data)


# --- legacy GGML/GGMF/GGJT files ---------------------------------------------------------------


def valid_legacy(container: str, version: int) -> bytes:
    import legacy_writer as lw

    rng = np.random.default_rng(1)
    vocab = [(b"<unk>", 0.0), (b"a", -1.0), (b"bc", -2.0)]
    tensors = []
    for name, shape, kind in [
        ("tok_embeddings.weight", (3, 32), "q4_0"),
        ("layers.0.attention_norm.weight", (32,), "f32"),
        ("layers.0.attention.wq.weight", (32, 32), "q8_0"),
        ("output.weight", (3, 32), "f16"),
    ]:
        layout = "v3" if version == 3 else "v2" if version == 2 else "v1"
        type_id, raw, _ = lw.encode(rng.standard_normal(shape), kind, layout)
        tensors.append((name, type_id, shape, raw))
    hparams = [3, 32, 256, 4, 1, 8, 2]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-{os.getpid()}-{container}{version}"
    lw.write_file(path, container=container, version=version, hparams=hparams, vocab=vocab, tensors=tensors)  # fmt: skip
    try:
        return path.read_bytes()
    finally:
        path.unlink()


LEGACY = {v: valid_legacy("ggjt", v) for v in (1, 3)}


def _convert_legacy_bytes(path: Path, data: bytes) -> None:
    from ggufkit.convert.legacy.reader import read_legacy
    from ggufkit.convert.legacy.tensors import gguf_name, plan_tensor

    path.write_bytes(data)
    with contextlib.suppress(GGUFKitError):
        legacy = read_legacy(path)
        for tensor in legacy.tensors:
            job = plan_tensor(legacy, tensor, gguf_name(legacy.family, tensor.name) or "x")
            for chunk in job.chunks():
                np.asarray(chunk).sum()


@FUZZ
@given(
    version=st.sampled_from([1, 3]),
    position=st.integers(min_value=0, max_value=len(LEGACY[1]) - 1),
    replacement=st.binary(min_size=1, max_size=8),
    truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=len(LEGACY[1]))),
)
def test_mutated_legacy_file(
    tmp_path: Path, version: int, position: int, replacement: bytes, truncate: int | None
) -> None:
    data = LEGACY[version]
    data = data[:position] + replacement + data[position + len(replacement) :]
    _convert_legacy_bytes(tmp_path / "m.bin", data[:truncate])


def test_the_valid_legacy_files_read(tmp_path: Path) -> None:
    from ggufkit.convert.legacy.reader import read_legacy

    for version, data in LEGACY.items():
        (tmp_path / "v.bin").write_bytes(data)
        legacy = read_legacy(tmp_path / "v.bin")
        assert (legacy.version, len(legacy.tensors), legacy.family) == (version, 4, "llama")


# --- counts and sizes grown toward 2**64: a clear error in bounded memory ------------------------
# Every count, size and dimension a reader takes from a file is checked against what the file can
# hold before anything is allocated for it. tracemalloc sees Python's and numpy's allocations.

MiB = 1024 * 1024
GROWN = sorted({2**k + d for k in (15, 16, 24, 31, 32, 53, 62, 63, 64) for d in (-1, 0, 1)})
BOUNDED = settings(FUZZ, max_examples=max(EXAMPLES // 5, 1))  # 60 by default


def _peak(func: Any, *args: Any) -> int:
    """The peak of ``func(*args)``'s allocations; it may raise only a GGUFKitError."""
    import tracemalloc

    tracemalloc.start()
    try:
        with contextlib.suppress(GGUFKitError):
            func(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@BOUNDED
@given(
    position=st.integers(min_value=4, max_value=len(VALID_GGUF) - 8),
    width=st.sampled_from([4, 8]),
    value=st.sampled_from(GROWN),
)
def test_gguf_fields_grown_toward_2_64(
    tmp_path: Path, position: int, width: int, value: int
) -> None:
    packed = struct.pack("<Q", value % 2**64)[:width]
    data = VALID_GGUF[:position] + packed + VALID_GGUF[position + width :]
    assert _peak(_check_gguf, tmp_path / "x.gguf", data) < 16 * MiB


@BOUNDED
@given(
    shape=st.lists(st.sampled_from([0, 1, 2, 4, *GROWN]), max_size=5),
    offsets=st.lists(st.sampled_from([0, 2, 8, 64, *GROWN]), min_size=2, max_size=2),
    header_len=st.one_of(st.none(), st.sampled_from(GROWN)),
)
def test_safetensors_fields_grown_toward_2_64(
    tmp_path: Path, shape: list[int], offsets: list[int], header_len: int | None
) -> None:
    raw = json.dumps({"w": {"dtype": "F16", "shape": shape, "data_offsets": offsets}}).encode()
    prefix = struct.pack("<Q", (len(raw) if header_len is None else header_len) % 2**64)
    path = tmp_path / "x.safetensors"
    assert _peak(_check, path, prefix + raw + bytes(64)) < 16 * MiB


@BOUNDED
@given(
    position=st.integers(min_value=1, max_value=200).map(lambda i: 4 * i),
    value=st.sampled_from([v for v in GROWN if v < 2**32]),
)
def test_legacy_fields_grown_toward_2_32(tmp_path: Path, position: int, value: int) -> None:
    data = LEGACY[3]
    data = data[:position] + struct.pack("<I", value) + data[position + 4 :]
    assert _peak(_convert_legacy_bytes, tmp_path / "m.bin", data) < 16 * MiB + 4 * len(data)


CONFIG_NUMBERS = [
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "num_hidden_layers", "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps",
]  # fmt: skip


@BOUNDED
@given(
    key=st.sampled_from(CONFIG_NUMBERS),
    value=st.sampled_from([*GROWN, 2**70, 1e30, float("inf"), float("nan"), -1, 0, "nan"]),
)
def test_config_numbers_grown_toward_2_64(tmp_path_factory: Any, key: str, value: object) -> None:
    import shutil

    from ggufkit.convert import convert
    from ggufkit.data import embedded_model

    tmp = tmp_path_factory.mktemp("config")
    model = tmp / "model"
    shutil.copytree(embedded_model("tiny-llama"), model)
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    assert _peak(lambda: convert(model, tmp / "o.gguf", engine="native")) < 64 * MiB
