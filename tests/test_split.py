"""Split GGUF sets: written natively by convert, through llama-gguf-split by quantize, and read
from their first shard. The oracle is the built llama-gguf-split itself (and gguf-py's reader)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import GGUFFormatError, UsageError
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.formats.gguf_split import (
    SplitLimits,
    parse_size,
    plan_shards,
    shard_path,
    split_limits,
    split_set,
)


def test_sizes_names_and_cuts() -> None:
    assert parse_size("2M") == 2_000_000 and parse_size("50G") == 50 * 1000**3
    for bad in ("2", "0M", "-1G", "2K", "1.5G"):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError, match="cannot be combined"):
        split_limits("2M", 3)
    assert split_limits("2G", None).tool_args() == ["--split-max-size", "2G"]
    assert split_limits("1500M", None).tool_args() == ["--split-max-size", "1500M"]
    assert split_limits(None, 7).tool_args() == ["--split-max-tensors", "7"]
    assert shard_path(Path("a/m-F16.gguf"), 1, 3) == Path("a/m-F16-00002-of-00003.gguf")
    by_count = plan_shards([1] * 7, SplitLimits(max_tensors=3))
    assert [list(r) for r in by_count] == [[0, 1, 2], [3, 4, 5], [6]]
    by_size = plan_shards([4, 4, 4, 9, 1], SplitLimits(max_bytes=8))
    assert [list(r) for r in by_size] == [[0, 1], [2], [3], [4]]  # too big: a shard of its own


def test_split_set_needs_the_first_shard_and_every_file(tmp_path: Path) -> None:
    single = tmp_path / "m.gguf"
    assert split_set(single) == [single]
    for i in (1, 2):
        shard_path(single, i - 1, 3).write_bytes(b"GGUF")
    with pytest.raises(GGUFFormatError, match="lacks m-00003-of-00003.gguf"):
        split_set(shard_path(single, 0, 3))
    with pytest.raises(UsageError, match="not the first") as info:
        split_set(shard_path(single, 1, 3))
    assert "m-00001-of-00003.gguf" in (info.value.hint or "")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fields(path: Path) -> dict[str, Any]:
    """Every metadata key's type and raw value bytes, as gguf-py reads them."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {
        key: (field.types, [bytes(part) for part in field.parts])
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.")
    }


def _tensors(path: Path) -> list[tuple[str, Any, bytes]]:
    import gguf

    return [(t.name, t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(path).tensors]


@pytest.mark.needs_llamacpp
@pytest.mark.parametrize("limit", [["--split-max-tensors", "5"], ["--split-max-size", "1M"]])
def test_convert_split_equals_the_tools_split_and_merges_back(
    tmp_path: Path, tiny_llama_gqa_dir: Path, limit: list[str]
) -> None:
    from ggufkit.llamacpp.gguf_split import merge_files, split_file

    runner = CliRunner()
    whole, parts = tmp_path / "whole.gguf", tmp_path / "parts.gguf"
    done = runner.invoke(cli, ["convert", str(tiny_llama_gqa_dir), "-o", str(whole)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["convert", str(tiny_llama_gqa_dir), "-o", str(parts), *limit])
    assert done.exit_code == 0, done.output
    ours = sorted(tmp_path.glob("parts-*-of-*.gguf"))
    assert len(ours) > 1 and not parts.exists()
    assert done.stdout.splitlines()[0] == str(ours[0])

    # The built tool, splitting the unsplit file the same way, writes the same bytes.
    split_file(whole, tmp_path / "tool", limit)
    theirs = sorted(tmp_path.glob("tool-*-of-*.gguf"))
    assert [p.name[len("tool") :] for p in theirs] == [p.name[len("parts") :] for p in ours]
    assert [_sha(p) for p in theirs] == [_sha(p) for p in ours]

    # Merged by the tool: every tensor and every key equal the unsplit file's, bar split.*.
    merged = tmp_path / "merged.gguf"
    merge_files(ours[0], merged)
    assert _tensors(merged) == _tensors(whole)
    merged_kv, whole_kv = _fields(merged), _fields(whole)
    assert {k for k in merged_kv if k not in whole_kv} == {
        "split.no",
        "split.count",
        "split.tensors.count",
    }
    assert {k: v for k, v in merged_kv.items() if not k.startswith("split.")} == whole_kv

    # The first shard stands for the model in ggufkit's own reader.
    info, single = read_gguf(ours[0]), read_gguf(whole)
    assert [t.name for t in info.tensors] == [t.name for t in single.tensors]
    assert info.shards == ours and info.file_size == sum(p.stat().st_size for p in ours)
    assert info.parameter_count == single.parameter_count
    shown = runner.invoke(cli, ["inspect", str(ours[0])])
    assert shown.exit_code == 0 and f"tensors:       {len(single.tensors)} " in shown.output


@pytest.mark.needs_llamacpp
def test_quantize_reads_a_split_set_and_writes_one(
    tmp_path: Path, tiny_llama_f16_gguf: Path
) -> None:
    from ggufkit.formats.gguf_split import split_set
    from ggufkit.llamacpp.gguf_split import split_file

    runner = CliRunner()
    split_file(tiny_llama_f16_gguf, tmp_path / "in", ["--split-max-tensors", "4"])
    first = sorted(tmp_path.glob("in-00001-of-*.gguf"))[0]
    from_split = runner.invoke(
        cli, ["quantize", str(first), "q8_0", "-o", str(tmp_path / "a.gguf")]
    )
    assert from_split.exit_code == 0, from_split.output
    direct = runner.invoke(
        cli, ["quantize", str(tiny_llama_f16_gguf), "q8_0", "-o", str(tmp_path / "b.gguf")]
    )
    assert direct.exit_code == 0, direct.output
    assert _tensors(tmp_path / "a.gguf") == _tensors(tmp_path / "b.gguf")

    cut = runner.invoke(
        cli,
        ["quantize", str(tiny_llama_f16_gguf), "q8_0", "-o", str(tmp_path / "c.gguf"),
         "--split-max-tensors", "10", "--json"],
    )  # fmt: skip
    assert cut.exit_code == 0, cut.output
    firsts = list(tmp_path.glob("c-00001-of-*.gguf"))
    assert len(firsts) == 1 and not (tmp_path / "c.gguf").exists()
    shards = split_set(firsts[0])
    assert len(shards) > 1 and cut.stdout.count(str(firsts[0])) == 1
    merged = tmp_path / "c-merged.gguf"
    from ggufkit.llamacpp.gguf_split import merge_files

    merge_files(shards[0], merged)
    assert _tensors(merged) == _tensors(tmp_path / "b.gguf")


def test_the_manifest_records_every_shard(tmp_path: Path) -> None:
    from ggufkit.workspace.manifest import describe_output

    base = tmp_path / "m.gguf"
    for i in range(2):
        shard_path(base, i, 2).write_bytes(b"shard %d" % i)
    record = describe_output(shard_path(base, 0, 2))
    assert record["kind"] == "split"
    assert record["files"] == {
        "m-00001-of-00002.gguf": hashlib.sha256(b"shard 0").hexdigest(),
        "m-00002-of-00002.gguf": hashlib.sha256(b"shard 1").hexdigest(),
    }
    assert record["size"] == 14


@pytest.mark.needs_llamacpp
def test_eval_bench_and_run_take_the_first_shard(tmp_path: Path, tiny_llama_f16_gguf: Path) -> None:
    import json

    from ggufkit.llamacpp.gguf_split import split_file

    split_file(tiny_llama_f16_gguf, tmp_path / "in", ["--split-max-tensors", "6"])
    first = sorted(tmp_path.glob("in-00001-of-*.gguf"))[0]
    runner = CliRunner()

    def json_of(*args: str) -> Any:
        done = runner.invoke(cli, [*args, "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    evals = [
        json_of("eval", str(m), "--chunks", "1", "--ctx", "64", "--no-speed")["models"][0]
        for m in (first, tiny_llama_f16_gguf)
    ]
    assert evals[0]["ppl"] == evals[1]["ppl"] and evals[0]["n_params"] == evals[1]["n_params"]
    whole = tiny_llama_f16_gguf.stat().st_size
    assert evals[0]["size_bytes"] > whole  # the set: every shard's header on top of the data
    bench = json_of("bench", str(first), "-p", "0", "-n", "4", "-r", "1")
    assert bench["size_bytes"] == evals[0]["size_bytes"]
    texts = [
        json_of("run", str(m), "-p", "Once upon", "-n", "6", "--temp", "0")["text"]
        for m in (first, tiny_llama_f16_gguf)
    ]
    assert texts[0] == texts[1]


@pytest.mark.needs_llamacpp
def test_a_workspace_splits_records_every_shard_and_unsplits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import shutil

    from ggufkit.data import embedded_model

    shutil.copytree(embedded_model("tiny-llama"), tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def ok(*args: str) -> str:
        done = runner.invoke(cli, list(args))
        assert done.exit_code == 0, (args, done.output)
        return done.stdout

    ok("init", "./tiny", "--types", "q8_0")
    for command in ("convert", "quantize"):  # in a workspace the size is ggufkit.toml's
        refused = runner.invoke(cli, [command, "--split-max-size", "2M"])
        assert refused.exit_code == 2 and "ggufkit.toml" in refused.output
    toml = tmp_path / "ggufkit.toml"
    assert '# split_max_size = "50G"' in toml.read_text()
    toml.write_text(toml.read_text().replace('# split_max_size = "50G"', 'split_max_size = "2M"'))
    assert "built in" in ok("quantize")
    out = tmp_path / "out"
    f16 = sorted(out.glob("tiny-F16-*-of-*.gguf"))
    q8 = sorted(out.glob("tiny-Q8_0-*-of-*.gguf"))
    assert len(f16) > 1 and len(q8) > 1
    assert not (out / "tiny-F16.gguf").exists() and not (out / "tiny-Q8_0.gguf").exists()
    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    assert sorted(manifest) == sorted([f16[0].name, q8[0].name])
    for shards in (f16, q8):
        record = manifest[shards[0].name]
        assert record["kind"] == "split" and sorted(record["files"]) == [p.name for p in shards]
        assert record["files"][shards[-1].name] == _sha(shards[-1])
        assert record["options"]["split"] == ["--split-max-size", "2M"]
    assert manifest[q8[0].name]["inputs"][0]["size"] == sum(p.stat().st_size for p in f16)
    assert "up to date (skipped)" in ok("quantize")
    assert "not built" not in ok("status") and "out of date" not in ok("status")
    listing = ok("publish", "me/t", "--dry-run")
    assert all(p.name in listing for p in [*f16, *q8])

    toml.write_text(toml.read_text().replace('split_max_size = "2M"', ""))
    assert "built in" in ok("quantize")
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-F16.gguf", "tiny-Q8_0.gguf"]
    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    # publish (even --dry-run) wrote and recorded the Modelfile beside the files
    assert sorted(manifest) == ["Modelfile", "tiny-F16.gguf", "tiny-Q8_0.gguf"]
