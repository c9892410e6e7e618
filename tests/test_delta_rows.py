"""The fast merge: the bf16 + bf16 -> f16 kernel, row blocks, and the block-parallel writers.

torch's own ``bf16.to(float16) + bf16.to(float16)`` (what FastChat runs) is the oracle for the
kernel; the whole-tensor reads and the sequential writer are the oracles for the row blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_delta import tensors, write_model

from ggufkit.delta import arith, merge_delta, open_merged
from ggufkit.delta.kernel import add_bf16_f16
from ggufkit.formats import shards
from ggufkit.formats.safetensors import Checkpoint, float32_to_bf16
from ggufkit.formats.shards import TensorSpec, write_sharded

EMBED = "model.embed_tokens.weight"


def torch_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FastChat's arithmetic: both bf16 inputs cast to f16, added in f16; f16 bits back."""
    import torch

    def half(bits: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float16)

    return (half(a) + half(b)).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.needs_torch
def test_kernel_equals_torch_on_every_bf16_value_below_16384() -> None:
    rng = np.random.default_rng(5)
    every = np.arange(1 << 16, dtype=np.uint16)
    finite = every[(every & 0x7FFF) < 0x4680]  # both signs, zeros, subnormals, up to 16256
    for _ in range(6):
        partner = rng.permutation(finite)
        out = np.empty_like(finite)
        assert add_bf16_f16(out, finite, partner)
        np.testing.assert_array_equal(out, torch_sum(finite, partner))
    # The largest sums; -0 + -0, tiny negatives and opposite values give f16's zeros.
    a = np.array([0x467F, 0xC67F, 0x8000, 0x8001, 0x3C00, 0x0001], np.uint16)
    b = np.array([0x467F, 0xC67F, 0x8000, 0x8002, 0xBC00, 0x8001], np.uint16)
    out = np.empty_like(a)
    assert add_bf16_f16(out, a, b)
    np.testing.assert_array_equal(out, torch_sum(a, b))


@pytest.mark.needs_torch
@pytest.mark.parametrize("special", [0x7F80, 0xFFC1, 0x4680, 0xC77F])
def test_infinities_nans_and_large_values_take_the_exact_path(special: int) -> None:
    """Sums that may reach f16's infinity (an input of 16384 or more) included."""
    a = float32_to_bf16(np.linspace(-3, 3, 5000, dtype=np.float32))
    b = float32_to_bf16(np.linspace(0.01, -0.01, 5000, dtype=np.float32))
    a[1234] = b[1234] = special
    out = np.empty(a.size, np.uint16)
    assert not add_bf16_f16(out, a, b)
    merged = arith.output_array((a.size,), "f16")
    arith.combine_into(merged, a, "BF16", b, "BF16", "f16", subtract=False)
    expected = torch_sum(a, b)
    nan = np.isnan(expected.view(np.float16))
    np.testing.assert_array_equal(np.isnan(merged), nan)
    np.testing.assert_array_equal(merged.view(np.uint16)[~nan], expected[~nan])


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> tuple[Path, Path]:
    """A bf16 base and a bf16 delta with a row appended to the vocabulary (801 against 800)."""
    work = tmp_path_factory.mktemp("bf16-pair")
    arrays = tensors(tiny_llama_dir)
    base = write_model(work / "base", arrays, tiny_llama_dir, dtype="BF16")
    rng = np.random.default_rng(3)
    delta_arrays = {}
    for name, values in arrays.items():
        shape = (values.shape[0] + 1, *values.shape[1:]) if values.shape[0] == 800 else values.shape
        flat = rng.normal(0, 0.002, shape).astype(np.float32).reshape(-1)
        flat[: values.size : 97] = -values.reshape(-1)[::97]  # exact cancellations: zeros
        delta_arrays[name] = flat.reshape(shape)
    delta = write_model(
        work / "delta",
        delta_arrays,
        tiny_llama_dir,
        dtype="BF16",
        max_shard_bytes=300_000,
        vocab=801,
    )
    return base, delta


@pytest.mark.needs_torch
def test_bf16_merge_equals_torch_with_appended_rows(
    tmp_path: Path, bf16_pair: tuple[Path, Path]
) -> None:
    import torch

    base, delta = bf16_pair
    merge_delta(base, delta, tmp_path / "m")
    with (
        Checkpoint.open(base) as b,
        Checkpoint.open(delta) as d,
        Checkpoint.open(tmp_path / "m") as m,
    ):
        for name in d.names():
            result = m.read(name)
            assert result.dtype == np.float16
            other = (
                torch.from_numpy(np.array(d.read(name)).view(np.int16)).view(torch.bfloat16).half()
            )
            rows = b.info(name).shape[0]
            expected = other.clone()
            expected[:rows] += (
                torch.from_numpy(np.array(b.read(name)).view(np.int16)).view(torch.bfloat16).half()
            )
            np.testing.assert_array_equal(
                result.view(np.uint16), expected.view(torch.int16).numpy().view(np.uint16), name
            )


def test_row_blocks_equal_whole_reads(bf16_pair: tuple[Path, Path]) -> None:
    base, delta = bf16_pair
    with open_merged(base, delta) as source:
        assert source.extended
        for name in source.names():
            whole = np.array(source.read(name))
            rows = whole.shape[0]
            blocks = [source.read_rows(name, slice(s, s + 37)) for s in range(0, rows, 37)]
            np.testing.assert_array_equal(np.concatenate(blocks), whole, name)
            last = np.arange(rows - 1, max(-1, rows - 40), -1)  # reversed, the appended row first
            np.testing.assert_array_equal(source.read_rows(name, last), whole[last], name)
            sparse = np.array([rows - 1, 0])  # far apart: read through the memory map
            np.testing.assert_array_equal(source.read_rows(name, sparse), whole[sparse], name)


def test_block_parallel_writes_give_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "a": rng.standard_normal((300, 70)).astype(np.float16),
        "b": rng.integers(0, 2**16, (5000,), dtype=np.uint16),
        "c": np.array(2.5, dtype=np.float32),
        "d": rng.standard_normal((64, 3, 5)).astype(np.float32),
    }
    codes = {"a": "F16", "b": "BF16", "c": "F32", "d": "F32"}
    specs = [TensorSpec(name, codes[name], a.shape) for name, a in arrays.items()]
    (tmp_path / "one").mkdir()
    (tmp_path / "blocks").mkdir()
    write_sharded(tmp_path / "one", specs, lambda s: arrays[s.name], max_shard_bytes=40_000)
    monkeypatch.setattr(shards, "BLOCK_BYTES", 1000)  # many blocks per tensor
    write_sharded(
        tmp_path / "blocks",
        specs,
        lambda s: arrays[s.name],
        max_shard_bytes=40_000,
        produce_rows=lambda s, start, stop: arrays[s.name].reshape(-1, *s.shape[1:])[start:stop],
        threads=3,
    )
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) > 2 and files == sorted(p.name for p in (tmp_path / "blocks").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "blocks" / name).read_bytes()
