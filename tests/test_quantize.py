"""`ggufkit quantize` and `ggufkit imatrix`: the type table, naming, checks before running,
atomic outputs, and byte-identity with the pinned llama-quantize run by hand."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from ggufkit.cli import cli
from ggufkit.core.errors import (
    DiskSpaceError,
    GGUFFormatError,
    InputError,
    QuantizeError,
    ToolFailedError,
    ToolMissingError,
    UsageError,
    format_error,
)
from ggufkit.quantize import QuantizeOptions, plan_outputs, quantize
from ggufkit.quantize.engines import (
    BinaryEngine,
    DryRun,
    Engine,
    KVOverride,
    RunReport,
    parse_dry_run,
    parse_kv_override,
)
from ggufkit.quantize.types import QuantType, TypeTable, output_name, parse_help

HELP_SAMPLE = """usage: llama-quantize [--help] ...
-----------------------------------------------------------------------------
 allowed quantization types
-----------------------------------------------------------------------------

   2  or  Q4_0    :  4.34G, +0.4685 ppl @ Llama-3-8B
  19  or  IQ2_XXS :  2.06 bpw quantization
  38  or  MXFP4_MOE :  MXFP4 MoE
  15  or  Q4_K    : alias for Q4_K_M
  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B
   1  or  F16     : 14.00G, +0.0020 ppl @ Mistral-7B
          COPY    : only copy tensors, no quantizing
"""


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["quantize", *args])


def write_gguf(path: Path, *, quantized: bool = False) -> Path:
    """A small valid GGUF (gguf-py), enough for everything before llama.cpp runs."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    if quantized:
        packed = gguf.quantize(weight, gguf.GGMLQuantizationType.Q4_0)
        writer.add_tensor("blk.0.attn_q.weight", packed, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    else:
        writer.add_tensor("blk.0.attn_q.weight", weight.astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class FakeEngine(Engine):
    """Copies the input as 'quantized' output; can demand an imatrix or fail half-way."""

    name = "fake"

    def __init__(self, *, needs_imatrix: tuple[str, ...] = (), fail_on: str | None = None) -> None:
        self.needs_imatrix = needs_imatrix
        self.fail_on = fail_on
        self.runs: list[str] = []
        self.dry_runs: list[str] = []

    def table(self) -> TypeTable:
        return TypeTable(tuple(parse_help(HELP_SAMPLE)), "sample")

    def dry_run(self, source: Path, quant_type: QuantType, options: QuantizeOptions) -> DryRun:
        self.dry_runs.append(quant_type.name)
        return DryRun(quant_type.name in self.needs_imatrix, source.stat().st_size // 4)

    def run(self, source, output, quant_type, options, on_progress=None):  # type: ignore[no-untyped-def]
        self.runs.append(quant_type.name)
        output.write_bytes(source.read_bytes()[:100])
        if quant_type.name == self.fail_on:
            raise ToolFailedError("llama-quantize failed", tail="boom")
        shutil.copyfile(source, output)
        if on_progress:
            on_progress(2, 2)
        return RunReport(None, None)


@pytest.fixture
def f16(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "model-f16.gguf")


# --- the type table and names ---------------------------------------------------------------


def test_parse_help() -> None:
    table = TypeTable(tuple(parse_help(HELP_SAMPLE)), "sample")
    assert table.names == ["Q4_0", "IQ2_XXS", "MXFP4_MOE", "Q4_K", "Q4_K_M", "F16", "COPY"]
    q4 = table.get("q4_0")
    assert q4 is not None and q4.ftype == 2 and q4.bits_per_weight == 4.5
    assert q4.note.startswith("4.34G")
    assert table.get("IQ2_xxs").bits_per_weight == 2.06  # type: ignore[union-attr]  # stated
    assert table.get("q4_k_m").bits_per_weight == 4.5  # type: ignore[union-attr]  # Q4_K blocks
    assert table.get("mxfp4_moe").bits_per_weight == 4.25  # type: ignore[union-attr]
    assert table.get("q4_k").alias_of == "Q4_K_M"  # type: ignore[union-attr]
    copy = table.get("copy")
    assert copy is not None and copy.ftype is None and copy.bits_per_weight is None
    assert [t.name for t in table.resolve(["q4_0", "Q4_0", "f16"])] == ["Q4_0", "F16"]
    with pytest.raises(UsageError, match="'q9_9'") as caught:
        table.resolve(["q4_0", "q9_9"])
    assert "did you mean" not in (caught.value.hint or "") and "--list" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="'q4_k_mm'") as caught:
        table.resolve(["q4_k_mm"])
    assert "did you mean q4_k_m" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my-model-f16.gguf", "my-model-Q4_0.gguf"),
        ("my-model-F16.gguf", "my-model-Q4_0.gguf"),
        ("my-model.bf16.gguf", "my-model-Q4_0.gguf"),
        ("my-model_f32.GGUF", "my-model-Q4_0.gguf"),
        ("my-model-Q8_0.gguf", "my-model-Q4_0.gguf"),
        ("my-model.gguf", "my-model-Q4_0.gguf"),
        ("f16.gguf", "f16-Q4_0.gguf"),
        ("my-modelf16.gguf", "my-modelf16-Q4_0.gguf"),
    ],
)
def test_output_names(name: str, expected: str) -> None:
    assert output_name(Path(name), "q4_0", ["Q4_0", "Q8_0", "F16"]) == expected


def test_kv_overrides() -> None:
    assert parse_kv_override("general.name=str:my model") == KVOverride(
        "general.name", "str", "my model"
    )
    assert parse_kv_override("a.b=int:-3").value == -3
    assert parse_kv_override("a.b=float:0.5").value == 0.5
    assert str(parse_kv_override("a.b=bool:false")) == "a.b=bool:false"
    for bad in (
        "novalue",
        "=int:1",
        "a=int",
        "a=huh:1",
        "a=int:x",
        "a=bool:yes",
        "a=str:" + "x" * 200,
    ):
        with pytest.raises(UsageError):
            parse_kv_override(bad)


def test_binary_command_line() -> None:
    options = QuantizeOptions(
        imatrix=Path("m.imatrix"),
        threads=3,
        allow_requantize=True,
        pure=True,
        output_tensor_type="q8_0",
        override_kv=(parse_kv_override("a.b=int:1"),),
    )
    engine = BinaryEngine(Path("/bin/llama-quantize"))
    q4 = QuantType("Q4_0", 2, "", 4.5)
    assert engine.command(Path("in.gguf"), Path("out.gguf"), q4, options)[1:] == [
        "--allow-requantize", "--pure", "--imatrix", "m.imatrix", "--output-tensor-type", "q8_0",
        "--override-kv", "a.b=int:1", "in.gguf", "out.gguf", "Q4_0", "3",
    ]  # fmt: skip
    dry = engine.command(Path("-odd.gguf"), None, q4, QuantizeOptions(threads=3))
    assert dry[1] == "--dry-run" and dry[-1] == "Q4_0" and Path(dry[-2]).is_absolute()


def test_parse_dry_run() -> None:
    text = (
        "llama_model_quantize_impl: quant size  =     0.50 MiB (2.62 BPW)\n"
        "llama_model_quantize_impl: WARNING: dry run completed successfully, but actually "
        "completing this quantization will require an imatrix!\n"
    )
    assert parse_dry_run(text) == DryRun(True, 524288, 2.62)
    assert parse_dry_run("nothing") == DryRun(False, None)


# --- checks before anything runs --------------------------------------------------------------


def test_type_without_input_is_a_usage_error() -> None:
    result = run_cli("q4_0", "q8_0")
    assert result.exit_code == 2
    assert "no INPUT.gguf given" in result.output and "ggufkit init" in result.output
    result = run_cli("model.gguf")
    assert result.exit_code == 2 and "no quantization type" in result.output


def test_plan_outputs(f16: Path, tmp_path: Path) -> None:
    table = FakeEngine().table()
    q4, q8 = table.resolve(["q4_0", "q4_k_m"])
    assert plan_outputs(f16, [q4, q8], table) == [
        tmp_path / "model-Q4_0.gguf",
        tmp_path / "model-Q4_K_M.gguf",
    ]
    # model-F16.gguf is model-f16.gguf itself on a case-insensitive disk (macOS, Windows).
    with pytest.raises(UsageError, match="differ only in case"):
        plan_outputs(f16, table.resolve(["f16"]), table)
    assert plan_outputs(f16, [q4], table, outdir=tmp_path / "out") == [
        tmp_path / "out" / "model-Q4_0.gguf"
    ]
    with pytest.raises(UsageError, match="-o names one file"):
        plan_outputs(f16, [q4, q8], table, output=tmp_path / "x.gguf")
    with pytest.raises(UsageError, match="not both"):
        plan_outputs(f16, [q4], table, output=tmp_path / "x.gguf", outdir=tmp_path)
    with pytest.raises(UsageError, match="input"):
        plan_outputs(f16, [q4], table, output=f16)
    with pytest.raises(UsageError, match="directory"):
        plan_outputs(f16, [q4], table, output=tmp_path)


def test_quantize_writes_atomically_and_reports(f16: Path, tmp_path: Path) -> None:
    engine = FakeEngine()
    results = quantize(f16, ["Q4_0", "q4_k_m"], engine=engine)
    seen = sorted(p.name for p in tmp_path.iterdir())
    assert seen == ["model-Q4_0.gguf", "model-Q4_K_M.gguf", "model-f16.gguf"]
    assert [r.type for r in results] == ["Q4_0", "Q4_K_M"]
    assert results[0].size == f16.stat().st_size and results[0].engine == "fake"
    assert results[0].to_json()["output"] == str(tmp_path / "model-Q4_0.gguf")


def test_failure_leaves_no_output_and_keeps_earlier_types(f16: Path, tmp_path: Path) -> None:
    engine = FakeEngine(fail_on="Q4_K_M")
    with pytest.raises(ToolFailedError, match="failed"):
        quantize(f16, ["q4_0", "q4_k_m"], engine=engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-Q4_0.gguf", "model-f16.gguf"]


def test_imatrix_requirement_is_checked_before_running(f16: Path, tmp_path: Path) -> None:
    engine = FakeEngine(needs_imatrix=("IQ2_XXS",))
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix") as caught:
        quantize(f16, ["q4_0", "iq2_xxs"], engine=engine)
    assert "ggufkit imatrix" in (caught.value.hint or "")
    assert engine.runs == [] and engine.dry_runs == ["IQ2_XXS"]  # Q4_0 cannot need one
    with pytest.raises(InputError, match="does not exist"):  # a missing input, as a GGUF's
        quantize(f16, ["iq2_xxs"], engine=engine, options=QuantizeOptions(imatrix=tmp_path / "no"))
    imatrix = tmp_path / "m.imatrix"
    imatrix.write_bytes(b"x")
    quantize(f16, ["iq2_xxs"], engine=engine, options=QuantizeOptions(imatrix=imatrix))
    assert engine.runs == ["IQ2_XXS"]


def test_disk_space_is_checked_before_running(f16: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", "1000")
    engine = FakeEngine()
    with pytest.raises(DiskSpaceError, match="not enough free disk"):
        quantize(f16, ["q4_0"], engine=engine)
    assert engine.runs == [] and engine.dry_runs == ["Q4_0"]
    # The 16-bit upper bound does not fit, the dry run's exact size does: go ahead.
    monkeypatch.setenv("GGUFKIT_FAKE_FREE_BYTES", str(16 * 1024 * 1024 + 9000))
    quantize(f16, ["q4_0"], engine=engine)
    assert engine.runs == ["Q4_0"] and engine.dry_runs == ["Q4_0", "Q4_0"]
    monkeypatch.delenv("GGUFKIT_FAKE_FREE_BYTES")
    quantize(f16, ["q4_0"], engine=engine, force=True)  # the output exists now
    assert len(engine.dry_runs) == 2  # plenty of room: no dry run at all


def test_requantizing_needs_the_flag(tmp_path: Path) -> None:
    q4 = write_gguf(tmp_path / "model-Q4_0.gguf", quantized=True)
    engine = FakeEngine()
    with pytest.raises(QuantizeError, match="already quantized") as caught:
        quantize(q4, ["f16"], engine=engine)
    assert "--allow-requantize" in (caught.value.hint or "")
    assert engine.runs == []
    quantize(q4, ["copy"], engine=engine)  # copying tensors does not requantize
    quantize(q4, ["f16"], engine=engine, options=QuantizeOptions(allow_requantize=True))
    assert engine.runs == ["COPY", "F16"]


@pytest.mark.parametrize("content", [b"not a gguf at all", b"GGUF\x03\x00\x00\x00\x01"])
def test_bad_input_files(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad-f16.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFFormatError, match="bad-f16.gguf"):
        quantize(bad, ["q4_0"], engine=FakeEngine())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-f16.gguf"]


def test_missing_binary_suggests_build(
    f16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ggufkit.llamacpp.build as build

    def missing(name: str) -> Path:
        raise ToolMissingError(f"{name} is not built", hint="run `ggufkit build`")

    monkeypatch.setattr(build, "find_tool", missing)
    for args in ([str(f16), "q4_0"], ["--list"]):
        result = run_cli(*args)
        assert result.exit_code == 1, result.output
        assert "llama-quantize is not built" in result.output and "ggufkit build" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-f16.gguf"]


FAKE_BINARY = """#!/bin/sh
if [ "$1" = "--help" ]; then
  printf ' allowed quantization types\\n\\n   2  or  Q4_0    :  4.34G, +0.4685 ppl @ Llama-3-8B\\n'
  exit 1
fi
if [ "$1" = "--dry-run" ]; then echo "quant size  =     0.01 MiB (4.50 BPW)"; exit 0; fi
echo "[   1/   2] a.weight - converting" >&2
echo "llama_model_quantize: failed to quantize: something broke" >&2
printf 'junk' > "$2"
exit 3
"""


@pytest.mark.posix_only  # a POSIX shell script stands in
def test_binary_failure_shows_its_own_lines_and_the_log(f16: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "llama-quantize"
    fake.parent.mkdir()
    fake.write_text(FAKE_BINARY)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    progress: list[tuple[int, int]] = []
    engine = BinaryEngine(fake)
    with pytest.raises(ToolFailedError) as caught:
        quantize(f16, ["q4_0"], engine=engine)
    text = format_error(caught.value)
    assert "exit code 3" in text and "something broke" in text
    assert caught.value.log_path is not None and caught.value.log_path.is_file()
    assert f"full log: {caught.value.log_path}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "model-f16.gguf"]
    with pytest.raises(ToolFailedError):
        engine.run(
            f16,
            tmp_path / "o.gguf",
            engine.table().types[0],
            QuantizeOptions(),
            lambda d, n: progress.append((d, n)),
        )
    assert progress == [(1, 2)]


# --- the real llama-quantize --------------------------------------------------------------------

BYTE_IDENTICAL_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_m", "q6_k"]


def raw_quantize(source: Path, output: Path, quant_type: str, *flags: str) -> None:
    from ggufkit.llamacpp.build import find_tool

    done = subprocess.run(
        [str(find_tool("llama-quantize")), *flags, str(source), str(output), quant_type],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def assert_generates(model: Path) -> None:
    """Loads through llama_cpp and samples a few tokens with finite logits."""
    from ggufkit.llamacpp.bindings import load_llama_cpp

    llama_cpp = load_llama_cpp()
    # logits_all: without it llama_cpp never writes its score buffer (sampling happens in C), and
    # the buffer holds whatever memory it was given.
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=64, n_threads=1, logits_all=True, verbose=False
    )
    try:
        prompt = llm.tokenize(b"The quick brown fox")
        generated = []
        for token in llm.generate(prompt, top_k=1, temp=0.0):
            generated.append(token)
            if len(generated) == 4:
                break
        assert len(generated) == 4 and all(0 <= t < llm.n_vocab() for t in generated)
        scores = np.asarray(llm.scores[: llm.n_tokens])
        assert len(scores) == len(prompt) + 3 and np.isfinite(scores).all()
        assert scores.std(axis=1).min() > 0  # computed logits, not an untouched buffer
    finally:
        llm.close()


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_types_are_byte_identical_to_the_raw_binary(
    tiny_llama_f16_gguf: Path, tmp_path: Path
) -> None:
    result = run_cli(
        str(tiny_llama_f16_gguf), *BYTE_IDENTICAL_TYPES, "--outdir", str(tmp_path), "--json"
    )
    assert result.exit_code == 0, result.output
    import json

    from ggufkit.formats.gguf_reader import read_gguf

    rows = json.loads(result.stdout)
    assert [r["type"] for r in rows] == [t.upper() for t in BYTE_IDENTICAL_TYPES]
    for row in rows:
        output = Path(row["output"])
        assert output.name == f"tiny-llama-{row['type']}.gguf"
        reference = tmp_path / f"by-hand-{row['type']}.gguf"
        raw_quantize(tiny_llama_f16_gguf, reference, row["type"])
        assert output.read_bytes() == reference.read_bytes(), row["type"]
        assert row["size"] == output.stat().st_size
        assert 0 < row["tool_seconds"] <= row["seconds"]  # llama.cpp's share of the step
        # llama.cpp's own figure agrees with the file's tensor table.
        assert row["bits_per_weight"] == pytest.approx(read_gguf(output).bits_per_weight, abs=0.006)
        assert_generates(output)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_override_kv_reaches_the_file(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    options = QuantizeOptions(
        threads=2, override_kv=(parse_kv_override("general.name=str:renamed"),)
    )
    done = quantize(tiny_llama_f16_gguf, ["q4_0"], outdir=tmp_path, options=options)
    assert [r.engine for r in done] == ["binary"]
    from ggufkit.formats.gguf_reader import read_gguf

    assert read_gguf(done[0].output).metadata["general.name"] == "renamed"


@pytest.mark.needs_llamacpp
def test_list_comes_from_the_binary() -> None:
    from ggufkit.llamacpp.build import find_tool

    result = run_cli("--list")
    assert result.exit_code == 0, result.output
    help_text = subprocess.run(
        [str(find_tool("llama-quantize")), "--help"], capture_output=True, text=True, check=False
    ).stdout
    # stdout only: a first run logs its measuring of the mixes on stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:-2]]  # 2 footer lines
    assert listed == [t.name for t in parse_help(help_text)]
    assert {"Q4_0", "Q4_K_M", "IQ2_XXS", "TQ1_0", "MXFP4_MOE", "BF16", "COPY"} <= set(listed)
    q4_row = next(line for line in result.stdout.splitlines() if line.startswith("Q4_0 "))
    assert "4.50" in q4_row and "ppl" in q4_row  # the block's figure beside the mix's
    import json

    rows = json.loads(run_cli("--list", "--json").stdout)
    assert [r["name"] for r in rows] == listed and rows[0]["ftype"] is not None


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_bad_inputs_with_the_real_binary(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    model = work / "m-f16.gguf"
    shutil.copyfile(tiny_llama_f16_gguf, model)
    truncated = work / "cut-f16.gguf"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    not_gguf = work / "notes-f16.gguf"
    not_gguf.write_text("hello")
    q4 = quantize(model, ["q4_0"])[0].output
    before = sorted(p.name for p in work.iterdir())
    cases = [
        ([str(not_gguf), "q4_0"], 1, "not a GGUF file"),
        ([str(truncated), "q4_0"], 1, "truncated"),
        ([str(model), "q4_9"], 2, "unknown quantization type"),
        ([str(model), "iq2_xxs"], 1, "IQ2_XXS needs an importance matrix"),
        ([str(q4), "q8_0"], 1, "already quantized"),
        ([str(model), "q4_0", "-o", str(model)], 2, "same file as the input"),
        ([str(model), "q4_0"], 2, "already exists"),  # refused without --force, as convert does
        (
            [str(model), "q4_0", "-o", str(work / "m-b.gguf"), "--output-tensor-type", "bogus"],
            2,
            "not a ggml tensor type",
        ),
    ]
    for args, code, message in cases:
        result = run_cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
        assert sorted(p.name for p in work.iterdir()) == before, args


@pytest.mark.slow  # IQ2_XXS builds its grids first: ~10 s on 2 cores
@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_imatrix_end_to_end(tiny_llama_f16_gguf: Path, corpus_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny-f16.gguf"
    shutil.copyfile(tiny_llama_f16_gguf, model)
    result = CliRunner().invoke(
        cli,
        [
            "imatrix",
            str(model),
            "--corpus",
            str(corpus_path),
            "-c",
            "128",
            "--chunks",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    imatrix = tmp_path / "tiny-imatrix.gguf"
    assert imatrix.is_file() and '"entries": 14' in result.stdout
    result = run_cli(str(model), "iq2_xxs", "--imatrix", str(imatrix))
    assert result.exit_code == 0, result.output
    quantized = tmp_path / "tiny-IQ2_XXS.gguf"
    from ggufkit.formats.gguf_reader import read_gguf

    info = read_gguf(quantized)
    assert "IQ2_XXS" in info.tensor_types
    assert info.metadata["quantize.imatrix.file"] == str(imatrix)
    assert_generates(quantized)


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_imatrix_errors(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("far too short")
    result = CliRunner().invoke(
        cli,
        [
            "imatrix",
            str(tiny_llama_f16_gguf),
            "--corpus",
            str(short),
            "-o",
            str(tmp_path / "m.gguf"),
        ],
    )
    assert result.exit_code == 1 and "too short" in result.output, result.output
    result = CliRunner().invoke(cli, ["imatrix", str(short), "--corpus", str(short)])
    assert result.exit_code == 1 and "not a GGUF" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_progress_follows_the_tensor_lines(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    from ggufkit.quantize.engines import binary_engine

    engine = binary_engine()
    seen: list[tuple[int, int]] = []
    quant_type = engine.table().resolve(["q8_0"])[0]
    engine.run(
        tiny_llama_f16_gguf,
        tmp_path / "o.gguf",
        quant_type,
        QuantizeOptions(),
        lambda d, n: seen.append((d, n)),
    )
    from ggufkit.formats.gguf_reader import read_gguf

    n = len(read_gguf(tiny_llama_f16_gguf).tensors)
    assert seen == [(i, n) for i in range(1, n + 1)]
