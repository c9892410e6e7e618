"""The bad-input matrix across commands: a one-line message naming the file and what to do,
exit code 1 (2 for usage), no traceback, and the inputs left untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli

pytestmark = [pytest.mark.needs_torch, pytest.mark.needs_llamacpp]

CORPUS = Path(__file__).parent / "data" / "corpus.txt"


def _digest(root: Path) -> dict[str, str]:
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write_gguf(path: Path, *, quantized: bool = False) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    if quantized:
        writer.add_tensor(
            "blk.0.attn_q.weight",
            gguf.quantize(weight, gguf.GGMLQuantizationType.Q4_0),
            raw_dtype=gguf.GGMLQuantizationType.Q4_0,
        )
    else:
        writer.add_tensor("blk.0.attn_q.weight", weight.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- corruptions of a model directory ---------------------------------------------------------


def _config(model: Path) -> dict[str, object]:
    return json.loads((model / "config.json").read_text())


def _set_config(model: Path, **changes: object) -> None:
    config = _config(model)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (model / "config.json").write_text(json.dumps(config))


def _weights(model: Path) -> Path:
    return next(model.glob("*.safetensors"))


def _lying_offsets(model: Path) -> None:
    path = _weights(model)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _nan_weights(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = _weights(model)
    tensors = load_file(str(path))
    tensors["model.layers.0.mlp.down_proj.weight"][0, 0] = np.nan
    save_file(tensors, str(path), metadata={"format": "pt"})


def _dir_instead_of_weights(model: Path) -> None:
    path = _weights(model)
    path.unlink()
    path.mkdir()


@dataclass
class Case:
    id: str
    args: Callable[[Path, Path], list[str]]  # (input, tmp) -> argv
    corrupt: Callable[[Path], object] | None = None
    code: int = 1
    expect: tuple[str, ...] = ()
    kind: str = "model"  # model | gguf | quantized-gguf | delta


def convert_args(model: Path, tmp: Path) -> list[str]:
    return ["convert", str(model), "-o", str(tmp / "out.gguf"), "--engine", "native"]


def gguf_args(command: str, *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda path, tmp: [command, str(path), *extra]


CASES = [
    Case(
        "convert-missing-config",
        convert_args,
        lambda m: (m / "config.json").unlink(),
        expect=("config.json",),
    ),
    Case(
        "convert-config-not-json",
        convert_args,
        lambda m: (m / "config.json").write_text("{oops"),
        expect=("config.json", "JSON"),
    ),
    Case(
        "convert-config-empty",
        convert_args,
        lambda m: (m / "config.json").write_text(""),
        expect=("config.json",),
    ),
    Case(
        "convert-config-lacks-key",
        convert_args,
        lambda m: _set_config(m, hidden_size=None),
        expect=("config.json", "hidden_size"),
    ),
    Case(
        "convert-no-architectures",
        convert_args,
        lambda m: _set_config(m, architectures=None),
        expect=("architectures",),
    ),
    Case(
        "convert-unknown-architecture",
        convert_args,
        lambda m: _set_config(m, architectures=["NoSuchModelForCausalLM"]),
        expect=("NoSuchModelForCausalLM", "LlamaForCausalLM"),
    ),
    Case(
        "convert-missing-weights",
        convert_args,
        lambda m: _weights(m).unlink(),
        expect=("no weights",),
    ),
    Case(
        "convert-empty-weights",
        convert_args,
        lambda m: _weights(m).write_bytes(b""),
        expect=("model.safetensors",),
    ),
    Case(
        "convert-truncated-weights",
        convert_args,
        lambda m: _weights(m).write_bytes(_weights(m).read_bytes()[:1000]),
        expect=("model.safetensors",),
    ),
    Case(
        "convert-lying-offsets",
        convert_args,
        _lying_offsets,
        expect=("model.safetensors", "offsets"),
    ),
    Case(
        "convert-weights-is-a-directory",
        convert_args,
        _dir_instead_of_weights,
        expect=("no weights",),
    ),
    Case(
        "convert-wrong-shape-for-config",
        convert_args,
        lambda m: _set_config(m, intermediate_size=320),
        expect=("shape",),
    ),
    Case(
        "convert-vocab-mismatch",
        convert_args,
        lambda m: _set_config(m, vocab_size=500),
        expect=("vocab",),
    ),
    Case(
        "convert-billion-layers",
        convert_args,
        lambda m: _set_config(m, num_hidden_layers=10**9),
        expect=("1000000000", "layers"),
    ),
    Case(
        "convert-nan-epsilon",
        convert_args,
        lambda m: _set_config(m, rms_norm_eps="nan"),
        expect=("config.json", "rms_norm_eps"),
    ),
    Case(
        "convert-huge-context",
        convert_args,
        lambda m: _set_config(m, max_position_embeddings=1e30),
        expect=("config.json", "max_position_embeddings"),
    ),
    Case(
        "convert-tokenizer-json-is-a-list",
        convert_args,
        lambda m: (m / "tokenizer.json").write_text("[1, 2]"),
        expect=("tokenizer.json", "object"),
    ),
    Case(
        "convert-missing-tokenizer",
        convert_args,
        lambda m: [p.unlink() for p in m.glob("tokenizer*")],
        expect=("tokenizer",),
    ),
    Case(
        "convert-output-is-directory",
        lambda m, t: ["convert", str(m), "-o", str(t)],
        code=2,
        expect=("directory",),
    ),
    Case(
        "convert-not-a-directory",
        lambda m, t: ["convert", str(m / "config.json"), "-o", str(t / "o.gguf")],
        expect=("config.json",),
    ),
    Case(
        "quantize-not-gguf",
        gguf_args("quantize", "q4_0"),
        lambda p: p.write_bytes(b"PK\x03\x04 zip, not gguf" * 10),
        kind="gguf",
        expect=("x.gguf", "GGUF"),
    ),
    Case(
        "quantize-truncated-gguf",
        gguf_args("quantize", "q4_0"),
        lambda p: p.write_bytes(p.read_bytes()[:100]),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "quantize-empty-file",
        gguf_args("quantize", "q4_0"),
        lambda p: p.write_bytes(b""),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "quantize-unknown-type",
        gguf_args("quantize", "q3_banana"),
        kind="gguf",
        code=2,
        expect=("q3_banana",),
    ),
    Case(
        "quantize-iquant-without-imatrix",
        gguf_args("quantize", "iq2_xxs"),
        kind="converted-gguf",
        expect=("imatrix",),
    ),
    Case(
        "quantize-requantize-without-flag",
        gguf_args("quantize", "q8_0"),
        kind="quantized-gguf",
        expect=("--allow-requantize",),
    ),
    Case(
        "quantize-output-is-input",
        lambda p, t: ["quantize", str(p), "q4_0", "-o", str(p)],
        kind="gguf",
        code=2,
        expect=("same",),
    ),
    Case(
        "inspect-not-gguf",
        gguf_args("inspect"),
        lambda p: p.write_text("hello, I am text"),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "inspect-truncated-gguf",
        gguf_args("inspect"),
        lambda p: p.write_bytes(p.read_bytes()[:40]),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "inspect-lying-tensor-count",
        gguf_args("inspect"),
        lambda p: p.write_bytes(
            p.read_bytes()[:8] + struct.pack("<Q", 2**60) + p.read_bytes()[16:]
        ),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "eval-not-gguf",
        lambda p, t: ["eval", str(p), "--no-speed", "--corpus", str(CORPUS)],
        lambda p: p.write_bytes(b"\0" * 64),
        kind="gguf",
        expect=("x.gguf",),
    ),
    Case(
        "eval-missing-corpus",
        lambda p, t: ["eval", str(p), "--corpus", str(t / "nope.txt")],
        kind="gguf",
        code=1,  # a missing input file exits as a missing GGUF does
        expect=("nope.txt",),
    ),
    Case(
        "merge-delta-wrong-base",
        lambda d, t: [
            "merge-delta",
            "--base",
            str(t / "other-base"),
            "--delta",
            str(d),
            "-o",
            str(t / "merged"),
        ],
        kind="delta",
        expect=("shape",),
    ),
    Case(
        "merge-delta-missing-base",
        lambda d, t: [
            "merge-delta",
            "--base",
            str(t / "absent"),
            "--delta",
            str(d),
            "-o",
            str(t / "merged"),
        ],
        kind="delta",
        expect=("absent",),
    ),
    Case(
        "merge-delta-output-is-base",
        lambda d, t: ["merge-delta", "--base", str(d), "--delta", str(d), "-o", str(d)],
        kind="delta",
        code=2,
        expect=("overwrite",),
    ),
]


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    import tiny

    return tiny.make_llama(
        tmp_path_factory.mktemp("other-base"), hidden=64, intermediate=128, spm_model=spm_model
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, tiny_llama_dir: Path, other_base: Path, tiny_llama_f16_gguf: Path
) -> None:
    if case.kind == "converted-gguf":
        target = tmp_path / "x.gguf"
        shutil.copy(tiny_llama_f16_gguf, target)
    elif case.kind == "model" or case.kind == "delta":
        target = tmp_path / "model"
        shutil.copytree(tiny_llama_dir, target)
        if case.kind == "delta":
            shutil.copytree(other_base, tmp_path / "other-base")
    else:
        target = _write_gguf(tmp_path / "x.gguf", quantized=case.kind == "quantized-gguf")
    if case.corrupt is not None:
        case.corrupt(target)
    before = _digest(target) if target.exists() else {}
    outputs_before = set(os.listdir(tmp_path))

    result = CliRunner().invoke(cli, case.args(target, tmp_path))

    message = result.output
    assert result.exit_code == case.code, message
    assert message.startswith("Error: ") or "Usage:" in message, message
    assert "Traceback" not in message
    for needle in case.expect:
        assert needle.lower() in message.lower(), message
    first_line = message.splitlines()[0]
    assert len(first_line) < 600
    if result.exit_code == 1:
        assert "hint:" in message or "fix" in message.lower(), f"no advice in: {message}"
    assert (_digest(target) if target.exists() else {}) == before, "the input was modified"
    leftovers = set(os.listdir(tmp_path)) - outputs_before
    assert not leftovers, f"left behind: {leftovers}"


def test_matrix_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({case.args(Path("x"), Path("t"))[0] for case in CASES}) >= 4


def test_nan_weights_warn_and_name_the_tensor(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    _nan_weights(model)
    result = CliRunner().invoke(cli, convert_args(model, tmp_path))
    assert "model.layers.0.mlp.down_proj.weight" in result.output
    assert "nan" in result.output.lower()
