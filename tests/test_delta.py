"""merge-delta / make-delta: exactness, FastChat parity, bounded inputs, bad pairs, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import DeltaError, DiskSpaceError, UsageError
from ggufkit.core.fsutil import sha256_file
from ggufkit.delta import make_delta, merge_delta, open_merged
from ggufkit.formats.safetensors import Checkpoint, bf16_to_float32, float32_to_bf16
from ggufkit.formats.shards import TensorSpec, write_sharded

SIDE_FILES = ("config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json")
EMBED = "model.embed_tokens.weight"


def tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as float32 (exact for f16/bf16/f32)."""
    with Checkpoint.open(model_dir) as ckpt:
        return {name: np.array(ckpt.read(name, float32=True)) for name in ckpt.names()}


def write_model(
    out: Path,
    arrays: dict[str, np.ndarray],
    like: Path,
    *,
    dtype: str = "F32",
    max_shard_bytes: int = 10**12,
    vocab: int | None = None,
) -> Path:
    """A checkpoint of float32 ``arrays`` stored as ``dtype``, with ``like``'s side files."""
    out.mkdir(parents=True)
    for name in SIDE_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    if vocab is not None:
        config["vocab_size"] = vocab
    (out / "config.json").write_text(json.dumps(config))

    def produce(spec: TensorSpec) -> np.ndarray:
        values = arrays[spec.name].astype(np.float32)
        if dtype == "BF16":
            return float32_to_bf16(values)
        return values.astype(np.float16 if dtype == "F16" else np.float32)

    specs = [TensorSpec(name, dtype, a.shape) for name, a in arrays.items()]
    write_sharded(out, specs, produce, max_shard_bytes=max_shard_bytes)
    return out


def f16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float32)


def bf16(values: np.ndarray) -> np.ndarray:
    return bf16_to_float32(float32_to_bf16(values))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("delta")


@pytest.fixture(scope="module")
def base16(work: Path, tiny_llama_dir: Path) -> Path:
    """The tiny LLaMA in fp16, like the LLaMA checkpoints deltas were published against."""
    return write_model(work / "base16", tensors(tiny_llama_dir), tiny_llama_dir, dtype="F16")


@pytest.fixture(scope="module")
def pad16(work: Path, tiny_llama_pad_dir: Path) -> Path:
    """A 'fine-tuned' fp16 target with a <pad> row appended (vocab 801 against 800)."""
    return write_model(work / "pad16", tensors(tiny_llama_pad_dir), tiny_llama_pad_dir, dtype="F16")


@pytest.fixture(scope="module")
def same_delta(work: Path, tiny_llama_dir: Path) -> Path:
    """A bf16 delta of the base's shapes, in three shards (the base has one file)."""
    rng = np.random.default_rng(7)
    arrays = {
        name: rng.normal(0, 0.01, a.shape).astype(np.float32)
        for name, a in tensors(tiny_llama_dir).items()
    }
    return write_model(
        work / "same-delta", arrays, tiny_llama_dir, dtype="BF16", max_shard_bytes=200_000
    )


@pytest.fixture(scope="module")
def pad_delta(work: Path, tiny_llama_dir: Path, tiny_llama_pad_dir: Path) -> Path:
    """The Vicuna v0 / Chimera situation: the delta has one more vocabulary row than the base."""
    return make_delta(tiny_llama_dir, tiny_llama_pad_dir, work / "pad-delta")


# --- exactness -------------------------------------------------------------------------------


def test_make_then_merge_round_trips_bit_exactly_in_f32(
    tmp_path: Path, base16: Path, pad16: Path
) -> None:
    delta = make_delta(base16, pad16, tmp_path / "delta", dtype="f32")
    result = merge_delta(base16, delta, tmp_path / "merged", dtype="f32")
    assert result.style == "llmzoo"
    assert result.extended == {EMBED: (800, 801), "lm_head.weight": (800, 801)}
    merged, target = tensors(tmp_path / "merged"), tensors(pad16)
    assert merged.keys() == target.keys()
    for name, values in target.items():
        assert merged[name].dtype == np.float32
        np.testing.assert_array_equal(merged[name].view(np.uint32), values.view(np.uint32), name)
    with Checkpoint.open(tmp_path / "merged") as ckpt:
        assert {info.dtype for info in ckpt.infos()} == {"F32"}


def test_make_then_merge_round_trips_within_f16_rounding(
    tmp_path: Path, tiny_llama_dir: Path, pad_delta: Path, tiny_llama_pad_dir: Path
) -> None:
    merge_delta(tiny_llama_dir, pad_delta, tmp_path / "merged")
    base, merged, target = (
        tensors(tiny_llama_dir),
        tensors(tmp_path / "merged"),
        tensors(tiny_llama_pad_dir),
    )
    for name, values in target.items():
        b = np.zeros_like(values)
        b[: base[name].shape[0]] = base[name]
        # Two f16 roundings (the delta, then the sum), each within half a spacing of the larger.
        bound = 2 * np.spacing(np.maximum(np.abs(f16(values)), np.abs(f16(b))).astype(np.float16))
        assert np.all(np.abs(merged[name] - f16(values)) <= bound.astype(np.float32)), name


def test_f32_delta_of_f32_models_warns_about_inexact_values(
    tmp_path: Path, tiny_llama_dir: Path, tiny_llama_pad_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="ggufkit")
    delta = make_delta(tiny_llama_dir, tiny_llama_pad_dir, tmp_path / "d", dtype="f32")
    warned = [r.getMessage() for r in caplog.records if "cannot come back exactly" in r.message]
    assert len(warned) == 1
    merge_delta(tiny_llama_dir, delta, tmp_path / "m", dtype="f32")
    merged, target = tensors(tmp_path / "m"), tensors(tiny_llama_pad_dir)
    differ = sum(int(np.count_nonzero(merged[n] != target[n])) for n in target)
    assert differ > 0
    assert warned[0].startswith(f"{differ} values")


@pytest.mark.needs_torch
def test_merge_rounds_like_torch_in_bf16_and_f16(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path
) -> None:
    import torch

    base, delta = tensors(tiny_llama_dir), tensors(same_delta)
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        merge_delta(tiny_llama_dir, same_delta, tmp_path / dtype, dtype=dtype)
        merged = tensors(tmp_path / dtype)
        for name in base:
            expected = torch.from_numpy(base[name]).to(torch_dtype)
            expected += torch.from_numpy(delta[name]).to(torch_dtype)
            np.testing.assert_array_equal(merged[name], expected.float().numpy(), name)


def test_new_vocab_rows_get_a_zero_base_and_old_rows_are_kept(
    tmp_path: Path, tiny_llama_dir: Path, pad_delta: Path
) -> None:
    merge_delta(tiny_llama_dir, pad_delta, tmp_path / "m")
    base, delta, merged = tensors(tiny_llama_dir), tensors(pad_delta), tensors(tmp_path / "m")
    for name in (EMBED, "lm_head.weight"):
        assert merged[name].shape == (801, 128)
        np.testing.assert_array_equal(merged[name][:800], f16(f16(base[name]) + delta[name][:800]))
        np.testing.assert_array_equal(merged[name][800:], delta[name][800:])
        # LLMZoo's `x[-0:] = 0` would have left the merged rows equal to the delta's.
        assert not np.array_equal(merged[name][:800], delta[name][:800])


def test_open_merged_describes_what_it_reads(tiny_llama_dir: Path, pad_delta: Path) -> None:
    with open_merged(tiny_llama_dir, pad_delta, dtype="bf16") as source:
        assert source.style == "llmzoo"
        for name in source.names():
            info = source.info(name)
            raw, values = source.read(name), source.read(name, float32=True)
            assert (info.dtype, raw.dtype, raw.shape) == ("BF16", np.uint16, info.shape)
            assert info.n_bytes == raw.nbytes
            np.testing.assert_array_equal(bf16_to_float32(raw), values)
            source.release(name)


def _raw_values(code: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Weights-like values, values near fp16's limits (subnormal, overflow) and random bit patterns."""
    scales = rng.choice([0.02, 3e-6, 4e-8, 7e4, 1.0], size=n).astype(np.float64)
    values = rng.standard_normal(n) * scales
    if code == "F64":
        return values
    if code == "F32":
        values = values.astype(np.float32)
        values[::7] = rng.integers(0, 2**32, size=values[::7].size, dtype=np.uint32).view(
            np.float32
        )
        return values
    bits = rng.integers(0, 2**16, size=n, dtype=np.uint16)
    return bits if code == "BF16" else bits.view(np.float16)


@pytest.mark.needs_torch
@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_numpy_and_torch_arithmetic_agree_bit_for_bit(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.delta import arith

    torch = arith.torch_backend()
    assert torch is not None
    rng = np.random.default_rng(11)
    width = {"f16": np.uint16, "bf16": np.uint16, "f32": np.uint32}[dtype]
    for other_code in ("BF16", "F16", "F32", "F64"):
        for base_code in ("BF16", "F16", "F32"):
            other, base = _raw_values(other_code, rng, 5000), _raw_values(base_code, rng, 4000)
            results = []
            for backend in (torch, None):
                monkeypatch.setattr(arith, "torch_backend", lambda b=backend: b)
                for subtract in (False, True):
                    out = arith.output_array((5000,), dtype)  # type: ignore[arg-type]
                    with np.errstate(all="ignore"):
                        arith.combine_into(
                            out,
                            other,
                            other_code,
                            base,
                            base_code,
                            dtype,
                            subtract=subtract,  # type: ignore[arg-type]
                        )
                    results.append(out.view(width))
            for torch_out, numpy_out in zip(results[:2], results[2:], strict=True):
                nan = [
                    np.isnan(arith.to_float32(r.view(out.dtype), dtype))
                    for r in (torch_out, numpy_out)
                ]  # type: ignore[arg-type]
                np.testing.assert_array_equal(nan[0], nan[1])
                same = (torch_out == numpy_out) | nan[0]
                assert same.all(), (other_code, base_code, np.flatnonzero(~same)[:5])


# --- inputs in any layout --------------------------------------------------------------------


@pytest.mark.needs_torch
def test_bin_inputs_and_sharded_output_give_the_same_merge(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path
) -> None:
    import torch

    bin_base = tmp_path / "bin-base"
    bin_base.mkdir()
    for name in SIDE_FILES:
        shutil.copy(tiny_llama_dir / name, bin_base / name)
    state = {n: torch.from_numpy(a) for n, a in tensors(tiny_llama_dir).items()}
    torch.save(state, bin_base / "pytorch_model.bin")
    reference = merge_delta(tiny_llama_dir, same_delta, tmp_path / "ref")
    sharded = merge_delta(bin_base, same_delta, tmp_path / "sharded", max_shard_bytes=300_000)
    assert len(reference.files) == 1 and len(sharded.files) > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors(same_delta))
    assert index["metadata"]["total_size"] == sharded.total_bytes == reference.total_bytes
    from safetensors.numpy import load_file

    loaded: dict[str, np.ndarray] = {}
    for file in sharded.files:
        loaded.update(load_file(file))
    ref = tensors(tmp_path / "ref")
    assert loaded.keys() == ref.keys()
    for name, values in ref.items():
        np.testing.assert_array_equal(loaded[name].astype(np.float32), values, name)


def test_partial_release_keeps_reads_right(tiny_llama_dir: Path) -> None:
    with Checkpoint.open(tiny_llama_dir) as ckpt:
        before = np.array(ckpt.read(EMBED))
        ckpt.release(EMBED, 4096, 70_000)
        ckpt.release(EMBED, 200_000)
        np.testing.assert_array_equal(ckpt.read(EMBED), before)


def test_base_and_delta_from_the_hub(
    tmp_path: Path,
    tiny_llama_dir: Path,
    same_delta: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hubserver import serving

    with serving(monkeypatch, tmp_path / "hf") as hub:
        for repo, folder in (("acme/base", tiny_llama_dir), ("acme/delta", same_delta)):
            files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
            hub.add_repo(repo, {"main": files})
        from_hub = merge_delta("acme/base", "acme/delta", tmp_path / "hub")
    local = merge_delta(tiny_llama_dir, same_delta, tmp_path / "local")
    assert [f.read_bytes() for f in from_hub.files] == [f.read_bytes() for f in local.files]


# --- FastChat's own apply_delta --------------------------------------------------------------


def _fastchat(module: str, base: Path, target: Path, delta: Path) -> None:
    """Run fschat's script (installed --no-deps) as its users do."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = ["--base-model-path", str(base), "--target-model-path", str(target)]
    args += ["--delta-path", str(delta)]
    done = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_fastchat
def test_merge_equals_fastchat_apply_delta(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path, pad_delta: Path
) -> None:
    # Same shapes: FastChat's apply_delta as it is.
    _fastchat("fastchat.model.apply_delta", tiny_llama_dir, tmp_path / "fc", same_delta)
    ours = merge_delta(tiny_llama_dir, same_delta, tmp_path / "ours")
    assert ours.style == "fastchat"
    theirs, mine = tensors(tmp_path / "fc"), tensors(tmp_path / "ours")
    assert theirs.keys() == mine.keys()
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], name)
    # 801 rows against 800: fschat 0.2.36 adds without resizing, so it is given the base with
    # the zero <pad> rows FastChat v0 and LLMZoo add (not LLMZoo's whole zeroed matrix).
    base = tensors(tiny_llama_dir)
    for name in (EMBED, "lm_head.weight"):
        base[name] = np.concatenate([base[name], np.zeros((1, 128), np.float32)])
    padded = write_model(tmp_path / "padded-base", base, tiny_llama_dir, vocab=801)
    _fastchat("fastchat.model.apply_delta", padded, tmp_path / "fc-pad", pad_delta)
    merge_delta(tiny_llama_dir, pad_delta, tmp_path / "ours-pad")
    theirs, mine = tensors(tmp_path / "fc-pad"), tensors(tmp_path / "ours-pad")
    assert theirs.keys() == mine.keys()
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], name)


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_fastchat
def test_make_delta_equals_fastchat_make_delta(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path
) -> None:
    target = merge_delta(tiny_llama_dir, same_delta, tmp_path / "target").output
    _fastchat("fastchat.model.make_delta", tiny_llama_dir, target, tmp_path / "fc")
    make_delta(tiny_llama_dir, target, tmp_path / "ours")
    theirs, mine = tensors(tmp_path / "fc"), tensors(tmp_path / "ours")
    assert theirs.keys() == mine.keys()
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], name)


# --- fused into convert ----------------------------------------------------------------------


@pytest.mark.parametrize("block_bytes", [None, 1000])
def test_convert_with_delta_base_equals_merge_then_convert(
    tmp_path: Path,
    tiny_llama_dir: Path,
    pad_delta: Path,
    monkeypatch: pytest.MonkeyPatch,
    block_bytes: int | None,
) -> None:
    import gguf

    from ggufkit.convert import convert, writer

    if block_bytes is not None:  # many row blocks per tensor, through each thread's buffers
        monkeypatch.setattr(writer, "BLOCK_BYTES", block_bytes)

    # The merged directory gets the delta's name, so general.name agrees on both sides.
    merged = merge_delta(tiny_llama_dir, pad_delta, tmp_path / "merged" / pad_delta.name).output
    two_step = convert(merged, tmp_path / "two-step.gguf").output
    fused = convert(pad_delta, tmp_path / "fused.gguf", delta_base=tiny_llama_dir).output
    assert two_step.read_bytes() == fused.read_bytes()
    # Both name the true origin: the base's and the delta's files, not the merged shards.
    fields = gguf.GGUFReader(fused).fields
    assert fields["ggufkit.source.delta_base"].contents() == tiny_llama_dir.name
    assert fields["ggufkit.source.files"].contents() == [
        "base:model.safetensors",
        "model.safetensors",
    ]
    assert fields["ggufkit.source.sha256"].contents() == [
        sha256_file(tiny_llama_dir / "model.safetensors"),
        sha256_file(pad_delta / "model.safetensors"),
    ]


def test_a_merged_directory_edited_afterwards_records_its_own_files(
    tmp_path: Path, tiny_llama_dir: Path, pad_delta: Path
) -> None:
    import gguf

    from ggufkit.convert import convert

    merged = merge_delta(tiny_llama_dir, pad_delta, tmp_path / "merged").output
    weights = merged / "model.safetensors"
    stat = weights.stat()
    # Rewritten since the merge (a later mtime): the record no longer vouches for the weights.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fields = gguf.GGUFReader(convert(merged, tmp_path / "edited.gguf").output).fields
    assert "ggufkit.source.delta_base" not in fields
    assert fields["ggufkit.source.sha256"].contents() == [sha256_file(weights)]


# --- bad inputs: a clear error, and nothing left behind ----------------------------------------


def _variant(tmp_path: Path, model: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(model, out)
    return out


def _assert_nothing_written(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before


def test_bad_pairs_fail_before_writing(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path, pad_delta: Path
) -> None:
    other_arch = _variant(tmp_path, same_delta, "mistral")
    config = json.loads((other_arch / "config.json").read_text())
    config["architectures"], config["model_type"] = ["MistralForCausalLM"], "mistral"
    (other_arch / "config.json").write_text(json.dumps(config))

    arrays = tensors(same_delta)
    missing = dict(arrays)
    del missing["model.layers.1.mlp.up_proj.weight"]
    reshaped = dict(arrays)
    reshaped["model.layers.0.self_attn.q_proj.weight"] = np.zeros((128, 64), np.float32)
    cases = [
        (other_arch, "architectures is ['LlamaForCausalLM']"),
        (
            write_model(tmp_path / "missing", missing, same_delta),
            "model.layers.1.mlp.up_proj.weight",
        ),
        (
            write_model(tmp_path / "reshaped", reshaped, same_delta),
            "q_proj.weight: base [128, 128] vs delta [128, 64]",
        ),
    ]
    before = {p.name for p in tmp_path.iterdir()}
    for delta, message in cases:
        with pytest.raises(DeltaError) as caught:
            merge_delta(tiny_llama_dir, delta, tmp_path / "out")
        assert message in str(caught.value)
        assert caught.value.hint
    with pytest.raises(DeltaError, match="FastChat's apply_delta cannot merge") as caught:
        merge_delta(tiny_llama_dir, pad_delta, tmp_path / "out", style="fastchat")
    assert "--style llmzoo" in str(caught.value.hint)
    _assert_nothing_written(tmp_path, before)


def test_same_paths_are_refused(tmp_path: Path, tiny_llama_dir: Path, same_delta: Path) -> None:
    with pytest.raises(UsageError, match="the delta would be zeros"):
        make_delta(tiny_llama_dir, tiny_llama_dir, tmp_path / "d")
    with pytest.raises(UsageError, match="would overwrite --base"):
        merge_delta(tiny_llama_dir, same_delta, tiny_llama_dir)
    with pytest.raises(UsageError, match="would overwrite --delta"):
        merge_delta(tiny_llama_dir, same_delta, same_delta / "merged")
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(UsageError, match="does not hold a model"):
        merge_delta(tiny_llama_dir, same_delta, stranger)
    assert [p.name for p in stranger.iterdir()] == ["cat.jpg"]
    assert not (tmp_path / "d").exists()


def test_base_and_target_named_alike_but_for_case_are_one_model(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """One folder on macOS and Windows disks: refused everywhere, as check_output_path does."""
    shutil.copytree(tiny_llama_dir, tmp_path / "tiny")
    shutil.copytree(tiny_llama_dir, tmp_path / "TINY")
    with pytest.raises(UsageError, match="the delta would be zeros"):
        make_delta(tmp_path / "tiny", tmp_path / "TINY", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_not_enough_disk(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", "1000")
    with pytest.raises(DiskSpaceError, match="not enough free disk for the merged model"):
        merge_delta(tiny_llama_dir, same_delta, tmp_path / "out")
    with pytest.raises(DiskSpaceError, match="for the delta"):
        make_delta(tiny_llama_dir, same_delta, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_nothing(
    tmp_path: Path, tiny_llama_dir: Path, same_delta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.delta import source

    calls = {"n": 0}
    real = source.combine_into

    def fail_on_third(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "combine_into", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        merge_delta(tiny_llama_dir, same_delta, tmp_path / "out", max_shard_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_merge_and_make(tmp_path: Path, tiny_llama_dir: Path, tiny_llama_pad_dir: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(
        cli,
        [
            "make-delta",
            "--base",
            str(tiny_llama_dir),
            "--target",
            str(tiny_llama_pad_dir),
            "-o",
            str(tmp_path / "d"),
            "--dtype",
            "f32",
        ],
    )
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(tmp_path / "d")
    merged = runner.invoke(
        cli,
        [
            "merge-delta",
            "--base",
            str(tiny_llama_dir),
            "--delta",
            str(tmp_path / "d"),
            "-o",
            str(tmp_path / "m"),
            "--json",
        ],
    )
    assert merged.exit_code == 0, merged.output
    report = json.loads(merged.stdout)
    assert (report["style"], report["dtype"], report["tensors"]) == ("llmzoo", "f16", 21)
    assert report["extended"][EMBED] == [800, 801]
    assert "style llmzoo (chosen by auto)" in merged.stderr
    for name in ("config.json", "tokenizer.json", "tokenizer.model", "model.safetensors"):
        assert (tmp_path / "m" / name).is_file()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"] == 801
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (
        tiny_llama_pad_dir / "tokenizer.json"
    ).read_bytes()


def test_cli_errors_and_help(tmp_path: Path, tiny_llama_dir: Path) -> None:
    runner = CliRunner()
    same = runner.invoke(
        cli,
        [
            "make-delta",
            "--base",
            str(tiny_llama_dir),
            "--target",
            str(tiny_llama_dir),
            "-o",
            str(tmp_path / "d"),
        ],
    )
    assert same.exit_code == 2 and "Error: --base and --target are the same" in same.stderr
    missing = runner.invoke(
        cli,
        [
            "merge-delta",
            "--base",
            str(tiny_llama_dir),
            "--delta",
            str(tmp_path / "nowhere"),
            "-o",
            str(tmp_path / "m"),
        ],
    )
    assert missing.exit_code == 1 and "nowhere" in missing.stderr
    bad_style = runner.invoke(
        cli, ["merge-delta", "--base", "a", "--delta", "b", "-o", "c", "--style", "alpaca"]
    )
    assert bad_style.exit_code == 2
    help_text = runner.invoke(cli, ["merge-delta", "--help"]).stdout
    for words in ("fastchat", "llmzoo", "auto", "x[-0:] = 0", "--dtype f32"):
        assert words in help_text
