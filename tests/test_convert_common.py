"""Converter behaviour common to all architectures: bad inputs, atomic outputs, the upstream engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest
import tiny
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.core.errors import UnsupportedArchitectureError
from ggufkit.core.fsutil import partials


@pytest.fixture
def model(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    """A private copy of the tiny LLaMA to break."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


def _run(model: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["convert", str(model), "-o", str(out), *extra])
    return result.exit_code, result.output


def _assert_fails(model: Path, tmp_path: Path, *needles: str, code: int = 1) -> str:
    out = tmp_path / "out" / "model.gguf"
    exit_code, output = _run(model, out)
    assert exit_code == code, output
    assert output.startswith("Error: "), output
    for needle in needles:
        assert needle in output, output
    assert not out.exists() and not partials(out)
    return output


def _edit_config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def test_the_library_names_parameters_and_the_cli_its_options(model: Path, tmp_path: Path) -> None:
    # A library caller (the workspace, a script) has no command line: convert() speaks of its own
    # parameters; `ggufkit convert` says the same with its option names.
    from ggufkit.core.errors import UsageError

    out = tmp_path / "out.gguf"
    out.write_bytes(b"")
    for kwargs, words, options in (
        ({"tokenizer": model}, "`tokenizer` and `context_length`", ["--tokenizer", "x"]),
        ({}, "`force=True`", []),
    ):
        with pytest.raises(UsageError) as caught:
            convert(model, out, **kwargs)
        said = f"{caught.value} {caught.value.hint}"
        assert words in said and " --" not in said and " -o" not in said
        exit_code, output = _run(model, out, *options)
        assert exit_code == 2 and "`" not in output, output
        assert ("--tokenizer and --context-length" if options else "pass --force") in output


def test_missing_config(model: Path, tmp_path: Path) -> None:
    (model / "config.json").unlink()
    _assert_fails(model, tmp_path, "config.json is missing", "hint:")


def test_unknown_architecture_names_the_supported_ones(model: Path, tmp_path: Path) -> None:
    _edit_config(model, architectures=["FrobnicatorForCausalLM"])
    output = _assert_fails(model, tmp_path, "FrobnicatorForCausalLM", "LlamaForCausalLM")
    assert "BloomForCausalLM" in output
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM"):
        convert(model, tmp_path / "x.gguf", engine="native")


def test_native_engine_refuses_an_upstream_only_architecture(model: Path, tmp_path: Path) -> None:
    _edit_config(model, architectures=["MistralForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match="MistralForCausalLM"):
        convert(model, tmp_path / "x.gguf", engine="native")


def test_missing_weights(model: Path, tmp_path: Path) -> None:
    (model / "model.safetensors").unlink()
    _assert_fails(model, tmp_path, "no weights")


def test_truncated_safetensors(model: Path, tmp_path: Path) -> None:
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    _assert_fails(model, tmp_path, "model.safetensors", "not a valid safetensors file")


def test_header_whose_offsets_lie(model: Path, tmp_path: Path) -> None:
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    name = "model.layers.0.mlp.up_proj.weight"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end - 64]  # shorter than its shape needs
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (length - len(encoded)) if len(encoded) <= length else b""
    assert len(encoded) == length
    weights.write_bytes(raw[:8] + encoded + raw[8 + length :])
    _assert_fails(model, tmp_path, name, "its shape needs")


def test_tensor_shape_does_not_fit_the_config(model: Path, tmp_path: Path) -> None:
    _edit_config(model, intermediate_size=384)
    _assert_fails(model, tmp_path, "model.layers.0.mlp.", "has shape", "implies")


def test_missing_tensor(model: Path, tmp_path: Path) -> None:
    _edit_config(model, num_hidden_layers=3)
    _assert_fails(model, tmp_path, "lacks tensor", "blk.2.")


def test_missing_tokenizer(model: Path, tmp_path: Path) -> None:
    (model / "tokenizer.model").unlink()
    (model / "tokenizer.json").unlink()
    _assert_fails(model, tmp_path, "neither tokenizer.model nor tokenizer.json")


def test_output_is_a_directory(model: Path, tmp_path: Path) -> None:
    exit_code, output = _run(model, tmp_path)
    assert exit_code == 2 and "is a directory" in output
    assert not list(tmp_path.glob("*.gguf*"))


def test_not_enough_free_disk(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", "100000")
    _assert_fails(model, tmp_path, "not enough free disk")


def test_bad_outtype_is_a_usage_error(model: Path, tmp_path: Path) -> None:
    exit_code, output = _run(model, tmp_path / "x.gguf", "--outtype", "q4_0")
    assert exit_code == 2 and "q4_0" in output


@pytest.mark.needs_torch
def test_pytorch_bin_checkpoint_converts_like_safetensors(model: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    reference = convert(model, tmp_path / "st.gguf").output
    state = load_file(model / "model.safetensors")
    torch.save(state, model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    from_bin = convert(model, tmp_path / "bin.gguf").output
    tensors = [
        {t.name: t.data.tobytes() for t in gguf.GGUFReader(p).tensors}
        for p in (reference, from_bin)
    ]
    assert tensors[0] == tensors[1]


def test_json_reports_where_the_time_went(model: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    exit_code, output = _run(model, tmp_path / "m.gguf", "--json")
    wall = time.perf_counter() - started
    assert exit_code == 0, output
    result = json.loads(output[output.index("{") :])
    phases = result["phases"]
    assert set(phases) == {"prepare", "data", "finish"}
    # "prepare" is the rest of the total: a phase counted twice or timed outside the call would
    # make it negative, and the total lies within the call around it (not a speed threshold).
    assert min(phases.values()) > 0
    assert result["seconds"] <= wall


def test_a_llama_conversion_loads_no_engine_it_does_not_use(model: Path, tmp_path: Path) -> None:
    # Start-up is part of every conversion's time: the legacy and upstream engines and the
    # tokenizers library (BPE vocabularies only) stay unloaded for a LLaMA checkpoint.
    script = (
        "import sys; from ggufkit.convert import convert; "
        f"convert({str(model)!r}, {str(tmp_path / 'm.gguf')!r}); "
        "print(sorted(m for m in sys.modules if m.startswith(('tokenizers', "
        "'ggufkit.convert.legacy', 'ggufkit.convert.upstream', 'ggufkit.llamacpp'))))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- interrupted runs -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~340 MB of bf16: converting it takes long enough to interrupt."""
    return tiny.write_random_llama(
        tmp_path_factory.mktemp("big") / "model",
        hidden=1024,
        intermediate=2816,
        layers=8,
        heads=16,
        kv_heads=16,
    )


def _start_and_signal(big_model: Path, out: Path, sig: signal.Signals) -> tuple[int, str, bool]:
    env = {**os.environ, "GGUFKIT_NO_PROGRESS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ggufkit", "convert", str(big_model), "-o", str(out), "-t", "1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not partials(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    seen = bool(partials(out))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr, seen


@pytest.mark.slow
@pytest.mark.posix_only
def test_sigint_removes_the_partial_file(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.gguf"
    code, stderr, seen = _start_and_signal(big_model, out, signal.SIGINT)
    assert seen, "the conversion finished before it could be interrupted"
    assert code == 130, stderr
    assert "Interrupted" in stderr
    assert not out.exists() and not partials(out)


@pytest.mark.slow
@pytest.mark.posix_only
def test_sigkill_leaves_only_the_partial_file(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.gguf"
    code, _, seen = _start_and_signal(big_model, out, signal.SIGKILL)
    assert seen and code == -signal.SIGKILL
    assert not out.exists() and len(partials(out)) == 1


# --- the upstream engine --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.needs_torch
def test_upstream_engine(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = convert(tiny_llama_dir, tmp_path / "up.gguf", engine="upstream")
    assert result.engine == "upstream" and result.gguf_arch == "llama"
    assert result.n_tensors == 21 and result.output.is_file()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
@pytest.mark.needs_torch
def test_auto_falls_back_to_upstream_for_an_architecture_only_it_knows(
    model: Path, tmp_path: Path
) -> None:
    _edit_config(model, architectures=["MistralForCausalLM"], model_type="mistral")
    exit_code, output = _run(model, tmp_path / "mistral.gguf")
    assert exit_code == 0, output
    assert "upstream engine" in output
    assert gguf.GGUFReader(tmp_path / "mistral.gguf").fields["general.architecture"]


@pytest.mark.slow
@pytest.mark.needs_torch
def test_upstream_failure_is_reported_and_leaves_nothing(
    tiny_bloom_dir: Path, tmp_path: Path
) -> None:
    # 3 heads cannot split BLOOM's 64-wide fused qkv weight: upstream fails on the tensor.
    model = Path(shutil.copytree(tiny_bloom_dir, tmp_path / "model"))
    _edit_config(model, n_head=3)
    out = tmp_path / "bloom.gguf"
    exit_code, output = _run(model, out, "--engine", "upstream")
    assert exit_code == 1, output
    assert "upstream converter" in output and "full log:" in output
    assert not out.exists() and not partials(out)


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_upstream_gets_the_pre_tokenizer_of_an_unknown_tokenizer(
    tiny_bloom_dir: Path, tmp_path: Path, corpus_path: Path
) -> None:
    # Upstream alone refuses this locally trained tokenizer (test_convert_bloom); through
    # ggufkit it gets the pre-tokenizer derived from tokenizer.json, and tokenizes like HF.
    from ggufkit.inference.parity import tokenizer_parity

    result = convert(tiny_bloom_dir, tmp_path / "up.gguf", engine="upstream")
    assert "pre-tokenizer 'bloom', derived from tokenizer.json" in result.notes
    report = tokenizer_parity(result.output, tiny_bloom_dir, corpus_path.read_text())
    assert report.equal, report.summary()


def test_converter_hooks_are_abstract() -> None:
    """A converter that forgets a hook fails when it is made, not halfway through a file."""
    import inspect

    from ggufkit.convert.base import ModelConverter

    assert ModelConverter.__abstractmethods__ == {
        "read_config",
        "set_gguf_parameters",
        "set_vocab",
        "expected_shapes",
    }

    class Incomplete(ModelConverter):
        def read_config(self) -> None: ...

    assert inspect.isabstract(Incomplete)
    with pytest.raises(TypeError, match="abstract"):
        Incomplete(Path("."), {}, None, outtype="f16")  # type: ignore[abstract, arg-type]


def test_a_tokenizer_larger_than_the_model_is_refused(
    spm_model: Path, tiny_llama_json_tok_dir: Path
) -> None:
    """Pieces past the model's vocab_size would have no embedding row: refused, not dropped
    (the byte-level BPE path already refused them)."""
    from sentencepiece import SentencePieceProcessor

    from ggufkit.convert.vocab_spm import sentencepiece_vocab, tokenizer_json_vocab
    from ggufkit.core.errors import TokenizerError

    n = SentencePieceProcessor(model_file=str(spm_model)).vocab_size()
    assert len(sentencepiece_vocab(spm_model, n)) == n
    assert len(sentencepiece_vocab(spm_model, n + 2)) == n + 2  # padded, as before
    with pytest.raises(
        TokenizerError, match=f"up to {n - 1}, but the model's vocab_size is {n - 1}"
    ):
        sentencepiece_vocab(spm_model, n - 1)
    tokenizer_json = tiny_llama_json_tok_dir / "tokenizer.json"
    m = max(json.loads(tokenizer_json.read_text())["model"]["vocab"].values()) + 1
    assert len(tokenizer_json_vocab(tokenizer_json, m)) == m
    with pytest.raises(TokenizerError, match=f"vocab_size is {m - 1}"):
        tokenizer_json_vocab(tokenizer_json, m - 1)
