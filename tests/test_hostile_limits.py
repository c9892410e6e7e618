"""Hostile inputs, the limits half: every count, size and dimension read from a file is checked
against what the file can hold before anything is allocated for it, config numbers are checked
before use, and what used to escape as an internal error (RecursionError, ValueError,
AttributeError, struct.error, OverflowError, OSError) is one GGUFKitError naming the file.

Memory is bounded by a tracemalloc peak, or, where a regression would grow without end, by an
address-space limit in a forked child with a time limit.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import resource
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from ggufkit.core.errors import (
    ConfigError,
    ConversionError,
    DiskSpaceError,
    GGUFFormatError,
    GGUFKitError,
    LegacyFormatError,
    SafetensorsFormatError,
    TokenizerError,
    UsageError,
    WorkspaceError,
)
from ggufkit.data import embedded_model

MiB = 1024 * 1024
DEEP = 100_000  # far past the parser's recursion limit
LONG_INT = "7" * 5000  # past Python's 4300-digit int conversion limit


def tiny_llama(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(embedded_model("tiny-llama"), model)
    return model


def set_config(model: Path, **changes: Any) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def convert_native(model: Path) -> Any:
    from ggufkit.convert import convert

    return convert(model, model.parent / "out.gguf", engine="native")


def peak_of(func: Callable[[], object]) -> tuple[BaseException | None, int]:
    """(the exception ``func`` raised or None, the peak of Python/numpy allocations)."""
    tracemalloc.start()
    try:
        func()
        error = None
    except Exception as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def _child(conn: Any, func: Callable[..., object], args: tuple[Any, ...], extra: int) -> None:
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, used + extra))
    try:
        func(*args)
        conn.send(("ok", False, ""))
    except BaseException as exc:
        conn.send((type(exc).__name__, isinstance(exc, GGUFKitError), str(exc)[:2000]))


def in_bounded_child(
    func: Callable[..., object], *args: Any, extra: int = 1024 * MiB, timeout: float = 60
) -> tuple[str, bool, str]:
    """Run ``func(*args)`` in a forked child allowed ``extra`` more bytes of address space and
    ``timeout`` seconds: (exception type name or "ok", is it a GGUFKitError, message)."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(child, func, args, extra)
    )
    process.start()
    try:
        if not parent.poll(timeout):
            return "timeout", False, f"no answer in {timeout} s"
        return parent.recv()  # type: ignore[no-any-return]
    finally:
        if process.is_alive():
            process.kill()
        process.join()


def assert_clear(result: tuple[str, bool, str], *needles: str) -> None:
    kind, ours, message = result
    assert ours, f"{kind}: {message}"
    for needle in needles:
        assert needle in message, message
    assert len(message) < 1000, message[:200]


# --- config.json: the block count and the numbers ------------------------------------------------


@pytest.mark.posix_only
def test_a_billion_layers_is_refused_before_any_per_layer_work(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    set_config(model, num_hidden_layers=1_000_000_000)
    result = in_bounded_child(convert_native, model, extra=768 * MiB, timeout=60)
    assert_clear(result, "1000000000", "blk.4.")  # tiny-llama holds 4 layers
    assert not (tmp_path / "out.gguf").exists()


def _convert_upstream(model: Path) -> None:
    from ggufkit.convert import convert

    convert(model, model.parent / "out.gguf", engine="upstream")


@pytest.mark.posix_only
def test_the_upstream_engine_is_spared_a_billion_layers(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    set_config(model, num_hidden_layers=1_000_000_000)
    result = in_bounded_child(_convert_upstream, model, extra=768 * MiB, timeout=60)
    assert_clear(result, "1000000000", "tensors")


def test_both_engines_refuse_one_layer_more_than_the_tensors_hold(tmp_path: Path) -> None:
    # One rule for the native and the upstream engine: the config's block count must not exceed
    # the layers the tensor names hold (upstream would otherwise write a file llama.cpp rejects).
    from ggufkit.convert import convert

    model = tiny_llama(tmp_path)
    set_config(model, num_hidden_layers=5)  # tiny-llama holds 4 layers
    for engine in ("native", "upstream"):
        with pytest.raises(ConversionError, match=r"5 layers.*blk\.4\."):
            convert(model, tmp_path / f"{engine}.gguf", engine=engine)
        assert not (tmp_path / f"{engine}.gguf").exists()


def test_layers_claimed_beyond_the_tensors_cost_little(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    set_config(model, num_hidden_layers=3000)  # gguf's full name map: ~45 KB a block
    error, peak = peak_of(lambda: convert_native(model))
    assert isinstance(error, ConversionError), error
    assert "3000" in str(error) and error.hint
    assert peak < 40 * MiB, peak


@pytest.mark.parametrize("arch", [gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.BLOOM])
def test_block_zero_names_agree_with_gguf_full_map(arch: gguf.MODEL_ARCH) -> None:
    # gguf's own map built for every block is the oracle for the block-0 lookup.
    from ggufkit.convert.base import block_zero_name

    full = gguf.get_tensor_name_map(arch, 5)
    zero = gguf.get_tensor_name_map(arch, 1)
    checked = 0
    for hf_name in full.mapping:
        for suffix in ("", ".weight", ".bias"):
            want = full.get_name(hf_name + suffix, try_suffixes=(".weight", ".bias"))
            assert block_zero_name(zero, 5, hf_name + suffix) == want, hf_name + suffix
            checked += 1
    assert checked > 300
    assert block_zero_name(zero, 5, "model.layers.5.self_attn.q_proj.weight") is None
    assert block_zero_name(zero, 5, "model.layers." + "9" * 5000 + ".mlp.up_proj.weight") is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_position_embeddings", 1e30),  # struct.error in the GGUF writer before
        ("max_position_embeddings", 10**30),
        ("rms_norm_eps", "nan"),  # accepted before
        ("rms_norm_eps", float("nan")),
        ("rms_norm_eps", -1.0),
        ("hidden_size", 2**64),
        ("vocab_size", 0),
        ("num_attention_heads", True),
    ],
)
def test_config_numbers_are_checked_before_use(tmp_path: Path, key: str, value: object) -> None:
    model = tiny_llama(tmp_path)
    set_config(model, **{key: value})
    with pytest.raises(ConfigError, match=key) as caught:
        convert_native(model)
    assert "config.json" in str(caught.value) and caught.value.hint
    assert not (tmp_path / "out.gguf").exists()


def test_config_integer_of_5000_digits(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    text = (
        (model / "config.json")
        .read_text()
        .replace('"vocab_size": 2048', f'"vocab_size": {LONG_INT}')
    )
    (model / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="config.json"):
        convert_native(model)


@pytest.mark.posix_only
def test_a_fifo_named_config_json_is_refused(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path)
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    result = in_bounded_child(convert_native, model, timeout=30)
    assert_clear(result, "config.json", "not a regular file")


def test_oversized_settings_file_is_refused_before_reading(tmp_path: Path) -> None:
    from ggufkit.core.fsutil import read_json

    path = tmp_path / "config.json"
    path.write_text("{}")
    os.truncate(path, 600 * MiB)  # sparse: no disk used
    error, peak = peak_of(lambda: read_json(path, ConfigError))
    assert isinstance(error, ConfigError) and "600.00 MiB" in str(error), error
    assert peak < MiB


def _merge_record_of(model: Path) -> None:
    from ggufkit.formats.origin import read_merge_record

    assert read_merge_record(model) is None


@pytest.mark.posix_only
@pytest.mark.parametrize("kind", ["fifo", "deep"])
def test_a_hostile_merge_record_is_ignored(tmp_path: Path, kind: str) -> None:
    from ggufkit.formats.origin import MERGE_RECORD

    model = tiny_llama(tmp_path)
    if kind == "fifo":
        os.mkfifo(model / MERGE_RECORD)
    else:
        (model / MERGE_RECORD).write_text("[" * DEEP + "]" * DEEP)
    assert in_bounded_child(_merge_record_of, model, timeout=30)[0] == "ok"


# --- JSON and TOML that the parsers cannot take -------------------------------------------------


def test_deep_json_is_an_input_error(tmp_path: Path) -> None:
    from ggufkit.core.fsutil import read_json

    path = tmp_path / "deep.json"
    path.write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(TokenizerError, match="nested too deeply"):
        read_json(path, TokenizerError)


@pytest.mark.parametrize("content", ["deep", "list", "long-int"])
def test_hostile_tokenizer_json(tmp_path: Path, content: str) -> None:
    model = tiny_llama(tmp_path)
    text = {
        "deep": '{"model": ' + "[" * DEEP + "]" * DEEP + "}",
        "list": "[1, 2, 3]",  # AttributeError before
        "long-int": '{"model": ' + LONG_INT + "}",
    }[content]
    (model / "tokenizer.json").write_text(text)
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        convert_native(model)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("content", ["x = " + "[" * DEEP + "]" * DEEP, "x = " + LONG_INT])
def test_hostile_toml(tmp_path: Path, content: str) -> None:
    from ggufkit.workspace.batch.plan import load_plan
    from ggufkit.workspace.config import WorkspaceConfig

    path = tmp_path / "ggufkit.toml"
    path.write_text(content)
    with pytest.raises(WorkspaceError, match="ggufkit.toml"):
        WorkspaceConfig.from_toml(path)
    with pytest.raises(WorkspaceError, match="ggufkit.toml"):
        load_plan(path)


# --- safetensors headers ------------------------------------------------------------------------


def _safetensors(path: Path, header_text: str, body: bytes = b"") -> Path:
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ('{"w": ' + "[" * DEEP + "]" * DEEP + "}", "nested too deeply"),  # RecursionError before
        ('{"w": {"dtype": "F16", "shape": [' + LONG_INT + '], "data_offsets": [0, 0]}}', "JSON"),
        (
            '{"w": {"dtype": "F16", "shape": [0, ' + str(2**70) + '], "data_offsets": [0, 0]}}',
            "shape",
        ),
        (
            '{"w": {"dtype": "F16", "shape": [0, '
            + str(2**40)
            + ", "
            + str(2**40)
            + '], "data_offsets": [0, 0]}}',
            "shape",
        ),
        (
            '{"w": {"dtype": "F16", "shape": ['
            + ", ".join(["1"] * 100)
            + '], "data_offsets": [0, 2]}}',
            "shape",
        ),
    ],
)
def test_hostile_safetensors_header(tmp_path: Path, header: str, needle: str) -> None:
    from ggufkit.formats.safetensors import read_safetensors_header

    path = _safetensors(tmp_path / "model.safetensors", header, b"\0\0")
    with pytest.raises(SafetensorsFormatError, match=needle) as caught:
        read_safetensors_header(path)
    assert "model.safetensors" in str(caught.value) and len(str(caught.value)) < 1000


def test_zero_size_tensor_with_a_huge_dim_stops_merge_delta(tmp_path: Path) -> None:
    # An OverflowError in the merge before: the header is refused as it is read.
    from ggufkit.delta import merge_delta

    base = tiny_llama(tmp_path)
    delta = tmp_path / "delta"
    shutil.copytree(embedded_model("tiny-llama-milton-delta"), delta)
    weights = delta / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    end = max(entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__")
    header["extra.weight"] = {"dtype": "F16", "shape": [0, 2**70], "data_offsets": [end, end]}
    raw = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    with pytest.raises(SafetensorsFormatError, match="shape"):
        merge_delta(base, delta, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.needs_torch
def test_a_bin_tensor_claiming_more_than_its_file(tmp_path: Path) -> None:
    # A zero-stride view saved by torch: 1.6 KB on disk, 4 TiB once made contiguous before.
    import torch

    from ggufkit.formats.safetensors import Checkpoint

    torch.save({"w": torch.zeros(1).expand(2**20, 2**20)}, tmp_path / "pytorch_model.bin")
    error, peak = peak_of(lambda: Checkpoint.open(tmp_path).read("w"))
    assert isinstance(error, GGUFKitError) and "pytorch_model.bin" in str(error), error
    assert peak < 16 * MiB


def test_a_tensor_without_data_is_one_row_block() -> None:
    # [2**60, 0] passes the header (no bytes) but was 2**36 empty row blocks to every writer.
    import itertools

    from ggufkit.formats.blocks import row_blocks

    assert list(itertools.islice(row_blocks(2**60, 0), 3)) == [(0, 2**60)]
    assert list(row_blocks(0, 0)) == []
    assert list(row_blocks(5, 8, 16)) == [(0, 2), (2, 4), (4, 5)]


# --- the disk filling up ------------------------------------------------------------------------


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_merge_delta_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ggufkit.delta.merge as merge

    monkeypatch.setattr(merge, "write_sharded", _enospc)
    with pytest.raises(DiskSpaceError, match="merged model") as caught:
        merge.merge_delta(
            embedded_model("tiny-llama"),
            embedded_model("tiny-llama-milton-delta"),
            tmp_path / "merged",
        )
    assert caught.value.hint
    assert list(tmp_path.iterdir()) == []


def test_manifest_write_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ggufkit.workspace.manifest as manifest

    monkeypatch.setattr(manifest, "write_json_atomic", _enospc)
    with pytest.raises(DiskSpaceError, match="manifest"):
        manifest.Manifest.load(tmp_path / "manifest.json").save()


def test_free_disk_message_states_its_margin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ggufkit.core.fsutil import check_free_disk

    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(int(4.49 * MiB)))
    with pytest.raises(DiskSpaceError) as caught:
        check_free_disk(tmp_path / "x.gguf", int(3.51 * MiB))
    message = str(caught.value)
    assert "3.51 MiB" in message and "16.00 MiB margin" in message and "4.49 MiB" in message


# --- legacy GGML files --------------------------------------------------------------------------


def _legacy(path: Path, *, vocab: list[tuple[bytes, float]], tensors: list[Any]) -> Path:
    import legacy_writer as lw

    hparams = [len(vocab), 32, 256, 4, 1, 8, 0]
    return lw.write_file(
        path, container="ggjt", version=3, hparams=hparams, vocab=vocab, tensors=tensors
    )


def test_legacy_dims_whose_int64_product_wraps(tmp_path: Path) -> None:
    from ggufkit.convert.legacy.reader import F32, read_legacy

    vocab = [(b"<unk>", 0.0), (b"a", -1.0), (b"b", -2.0)]
    # 2**16 ** 4 == 2**64: zero in int64, so the tensor claimed no data before.
    path = _legacy(tmp_path / "m.bin", vocab=vocab, tensors=[("tok_embeddings.weight", F32, (2**16,) * 4, b"")])  # fmt: skip
    with pytest.raises(LegacyFormatError, match="truncated"):
        read_legacy(path)


def test_legacy_vocabulary_costs_about_its_bytes(tmp_path: Path) -> None:
    from ggufkit.convert.legacy.reader import F32, read_legacy

    n = 50_000
    vocab = [(bytes([i % 256]), -float(i)) for i in range(n)]
    weight = np.zeros((4, 32), dtype=np.float32).tobytes()
    path = _legacy(tmp_path / "m.bin", vocab=vocab, tensors=[("layers.0.attention.wq.weight", F32, (4, 32), weight)])  # fmt: skip
    size = path.stat().st_size
    result: list[Any] = []
    error, peak = peak_of(lambda: result.append(read_legacy(path)))
    assert error is None, error
    legacy = result[0]
    assert len(legacy.vocab) == n and legacy.vocab[n - 1] == (bytes([(n - 1) % 256]), -(n - 1.0))
    assert list(legacy.vocab)[:2] == [(b"\0", 0.0), (b"\1", -1.0)]
    assert peak < 3 * size, (peak, size)  # 14x the file with a list of tuples


def test_legacy_context_lengths_are_checked(tmp_path: Path) -> None:
    # struct.error in the GGUF writer before, from --context-length or the tokenizer's config.
    from ggufkit.convert.legacy import convert_legacy
    from ggufkit.convert.legacy.reader import F32

    weight = np.zeros((4, 32), dtype=np.float32).tobytes()
    vocab = [(b"<unk>", 0.0), (b"a", -1.0), (b"b", -2.0)]
    path = _legacy(tmp_path / "m.bin", vocab=vocab, tensors=[("layers.0.attention.wq.weight", F32, (4, 32), weight)])  # fmt: skip
    with pytest.raises(UsageError, match="`context_length`"):
        convert_legacy(path, tmp_path / "o.gguf", context_length=2**40)
    tokenizer = tiny_llama(tmp_path)
    set_config(tokenizer, max_position_embeddings=10**30)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        convert_legacy(path, tmp_path / "o.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "o.gguf").exists()


# --- split names and run's context --------------------------------------------------------------


def test_split_name_claiming_99999_shards(tmp_path: Path) -> None:
    from ggufkit.formats.gguf_split import split_set

    first = tmp_path / "m-00001-of-99999.gguf"
    first.write_bytes(b"GGUF")
    with pytest.raises(GGUFFormatError, match="99995 more") as caught:
        split_set(first)
    assert len(str(caught.value)) < 300


def test_run_context_is_capped() -> None:
    from ggufkit.inference.generate import MAX_CTX, context_size

    model = Path("m.gguf")
    assert context_size(model, 128, None) == 128
    assert context_size(model, 2**31 - 1, None) == 4096
    assert context_size(model, 128, 64) == 64
    with pytest.raises(UsageError, match="trained context"):
        context_size(model, 128, 129)
    with pytest.raises(UsageError, match=str(MAX_CTX)):
        context_size(model, 2**31 - 1, 2**31 - 1)  # 8 GB of KV cache before
    with pytest.raises(UsageError, match=str(MAX_CTX)):
        context_size(model, None, 2**31 - 1)


def test_run_refuses_the_context_before_loading(tmp_path: Path) -> None:
    from ggufkit.inference import generate

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2**31 - 1)
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UsageError, match="--ctx"):
        generate._open(path, chat=False, ctx=2**31 - 1, threads=1, seed=0, max_tokens=4)
