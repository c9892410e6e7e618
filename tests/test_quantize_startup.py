"""What `ggufkit quantize` pays for before and after llama-quantize runs: the modules it imports,
the processes it starts, the caches it keeps (its speed is measured in benchmarks/, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufkit.core import paths
from ggufkit.core.fsutil import read_keyed_json, write_keyed_json

# Neither the command's import path nor its run may load these: heavy libraries, what only other
# commands need, and what only a cache miss, a stale output or a build needs.
MUST_NOT_IMPORT = (
    "numpy",
    "gguf",
    "yaml",
    "torch",
    "transformers",
    "huggingface_hub",
    "tqdm",
    "psutil",
    "platformdirs",
    "importlib.metadata",
    "tarfile",
    "shutil",
    "secrets",
    "email",
    "ggufkit.convert",
    "ggufkit.delta",
    "ggufkit.evaluate",
    "ggufkit.workspace",
    "ggufkit.hub",
    "ggufkit.bnb",
    "ggufkit.demo",
)
# The modules the command imports when it runs (the quantize library and the tool lookup).
LAZY = ("ggufkit.quantize", "ggufkit.llamacpp.build", "ggufkit.llamacpp.runner")

_RESOLVE = """
import importlib, json, sys
import click
from ggufkit.cli import cli
command = cli.get_command(click.Context(cli), "quantize")
assert command is not None and command.name == "quantize"
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""

# Runs the CLI as its console script does; records every process it starts and, at exit, every
# module it imported.
_RUN = """
import atexit, gc, json, subprocess, sys
record = {"spawned": []}
class Popen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        record["spawned"].append(list(map(str, args)))
        super().__init__(args, *rest, **kwargs)
subprocess.Popen = Popen
def dump():
    record["modules"] = sorted(sys.modules)
    record["frozen"] = gc.get_freeze_count()
    with open(sys.argv[1], "w") as handle:
        json.dump(record, handle)
atexit.register(dump)
from ggufkit.cli import main
main(sys.argv[2:])
"""


def heavy(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if any(name == bad or name.startswith(bad + ".") for bad in MUST_NOT_IMPORT)
    ]


def other_commands(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if name.startswith("ggufkit.cli.")
        and name not in ("ggufkit.cli.quantize", "ggufkit.cli.options")
    ]


def child_env() -> dict[str, str]:
    env = {**os.environ, "GGUFKIT_HOME": str(paths.home())}
    env.pop("GGUFKIT_NO_PROGRESS", None)  # -q alone must keep tqdm out
    return env


def test_resolving_quantize_imports_only_what_it_needs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE, *LAZY],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
    )
    modules = json.loads(done.stdout)
    assert "ggufkit.cli.quantize" in modules and "ggufkit.llamacpp.build" in modules
    assert heavy(modules) == []
    assert other_commands(modules) == []  # the root imports a command only when it runs


def test_the_checks_need_neither_gguf_nor_numpy(tmp_path: Path) -> None:
    """Everything before llama.cpp would run (reading the header, finding the tool, refusing an
    already quantized input) without gguf or numpy: ggufkit reads the header itself, and the ggml
    type sizes come from their cache."""
    import gguf
    import numpy as np

    warm = "from ggufkit.formats.gguf_tables import ggml_types; ggml_types()"
    subprocess.run([sys.executable, "-c", warm], env=child_env(), check=True)
    source = tmp_path / "model-Q8_0.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_tensor(
        "w", np.zeros((4, 32), dtype=np.float32), raw_dtype=gguf.GGMLQuantizationType.F32
    )
    writer.add_tensor(
        "q", np.zeros((4, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    record = tmp_path / "record.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(record), "-q", "quantize", str(source), "q4_0"],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 1, done.stderr  # already quantized, or no llama.cpp built here
    assert "already quantized" in done.stderr or "not built" in done.stderr, done.stderr
    data = json.loads(record.read_text())
    assert heavy(data["modules"]) == [], done.stderr
    # What start-up imported is kept out of the collector's passes (and its last one at exit).
    assert data["frozen"] > 0


@pytest.mark.needs_llamacpp
def test_a_quantize_run_starts_one_process_and_reports_its_lifetime(
    tiny_llama_f16_gguf: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    output = tmp_path / "out.gguf"
    args = [str(tiny_llama_f16_gguf), "q8_0", "-o", str(output), "--json"]

    def run() -> tuple[dict[str, list[list[str]]], list[dict[str, object]]]:
        output.unlink(missing_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", _RUN, str(record), "-q", "quantize", *args],
            capture_output=True,
            text=True,
            env=child_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(record.read_text()), json.loads(done.stdout)

    run()  # the first run may fill the type table's cache
    data, rows = run()
    # The quantization is the only process: no --help, no dry run (q8_0 needs no imatrix), and
    # no watcher tying it to ggufkit where the system does that alone (llamacpp.lifeline; macOS
    # has no such tie, so a watcher runs beside it there).
    watcher = [Path(sys.executable).name] if sys.platform == "darwin" else []
    assert [Path(args[0]).name for args in data["spawned"]] == ["llama-quantize", *watcher]
    assert "--dry-run" not in data["spawned"][0]
    assert heavy(data["modules"]) == []
    assert other_commands(data["modules"]) == []
    (row,) = rows
    assert isinstance(row["tool_seconds"], float) and isinstance(row["seconds"], float)
    assert 0 < row["tool_seconds"] <= row["seconds"]


def test_keyed_cache_answers_only_for_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    key = "2:/opt/llama-quantize:123:456"
    path = paths.cache_file("quantize-types", key)
    assert path == paths.cache_file("quantize-types", key)  # the same name in every process
    assert path.parent == tmp_path / "cache" / "quantize-types"
    assert paths.cache_file("quantize-types", key + "7") != path
    assert read_keyed_json(path, key) is None
    write_keyed_json(path, key, {"types": [1, 2]})
    assert read_keyed_json(path, key) == {"types": [1, 2]}
    assert read_keyed_json(path, "another key that shares the file name") is None
    path.write_text("{not json")
    assert read_keyed_json(path, key) is None


def test_a_caller_running_the_cli_keeps_its_collector() -> None:
    """Only ggufkit's own process freezes what it imported: in a caller's (here CliRunner in
    pytest) a freeze would pin the caller's uncollected garbage for good."""
    import gc

    from click.testing import CliRunner

    from ggufkit.cli import cli

    before = gc.get_freeze_count()
    result = CliRunner().invoke(cli, ["quantize", "--help"])
    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == before
