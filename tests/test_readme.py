"""Every shell example in README.md runs, as written, against the tiny models and the fake Hub.

Each ```sh / ```bash / ```console block runs in a folder of its own, one command after another
(``&&`` splits a line), through CliRunner. A line the tests cannot run offline carries the
visible comment ``(not run by the tests: WHY)`` in the README; there are few, and every other
line must be a ``ggufkit`` command. The names in the README map to local stand-ins (SUBSTITUTES);
the only options added are in EXTRA (speed runs off and bnb on one thread, to keep the suite
short).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import FakeHub, serving

from ggufkit.cli import cli
from ggufkit.data import embedded_adapter, embedded_model, embedded_picture

README = Path(__file__).resolve().parent.parent / "README.md"
NOT_RUN = "(not run by the tests"
MAX_NOT_RUN = 14

# README name -> what stands in for it: a Hub repo served by the fake Hub, or a local folder.
HUB_REPOS = {
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tiny-llama",
    "lmsys/vicuna-7b-delta-v0": "tiny-llama-milton-delta",
    "huggyllama/llama-7b": "tiny-llama",
}
FOLDERS = {
    "./my-model": "tiny-llama",
    "./tiny": "tiny-llama",
    "./vicuna-7b-delta-v0": "tiny-llama-milton-delta",
    "./llama-7b": "tiny-llama",
    "./my-vlm": "tiny-minicpmv",  # a MiniCPM-V 4.6 with random weights
}
PICTURES = {"cat.png": "shapes.png"}  # ggufkit.data.embedded_picture
ADAPTERS = {"./my-lora": "tiny-llama-milton-lora"}  # a PEFT LoRA of tiny-llama
# The stand-ins claim LLaMA-1's and TinyLlama's context (2048) in config.json, as the real ones do.
CONTEXT = 2048
PLAN = 'outdir = "out"\ntypes = ["q4_0"]\n\n[[models]]\nsource = "my-model"\n'
EXTRA = {"eval": ["--no-speed"], "bnb": ["--threads", "1"]}


def blocks() -> list[tuple[int, list[str]]]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(sh|bash|console)\n(.*?)^```", text, re.M | re.S):
        line_no = text[: match.start()].count("\n") + 1
        found.append((line_no, [line for line in match.group(2).splitlines() if line.strip()]))
    return found


def commands(lines: list[str]) -> Iterator[list[str]]:
    for line in lines:
        if NOT_RUN in line:
            continue
        for part in line.removeprefix("$ ").split(" && "):
            yield shlex.split(part, comments=True)


def test_the_readme_marks_what_it_cannot_run() -> None:
    lines = [line for _, block in blocks() for line in block]
    skipped = [line for line in lines if NOT_RUN in line]
    assert 0 < len(skipped) <= MAX_NOT_RUN, skipped
    others = [argv for argv in commands(lines) if argv and argv[0] != "ggufkit"]
    assert others == []


def stand_in(model: str) -> dict[str, bytes]:
    """The embedded model's files, its config.json claiming the real model's context."""
    folder = embedded_model(model)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    config["max_position_embeddings"] = CONTEXT
    files["config.json"] = json.dumps(config, indent=2).encode()
    return files


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with serving(monkeypatch, Path(os.environ["HF_HOME"])) as server:
        for repo, model in HUB_REPOS.items():
            server.add_repo(repo, {"main": stand_in(model)})
        yield server


@pytest.mark.slow
@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.parametrize(
    "line_no",
    [
        pytest.param(n, marks=[pytest.mark.needs_mtmd] if "--image" in "".join(block) else [])
        for n, block in blocks()
        if list(commands(block))
    ],
)
def test_readme_example_runs(
    line_no: int,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    block = dict(blocks())[line_no]
    monkeypatch.chdir(tmp_path)
    for name, model in FOLDERS.items():
        (tmp_path / name).mkdir()
        for file, data in stand_in(model).items():
            (tmp_path / name / file).write_bytes(data)
    for name, adapter in ADAPTERS.items():
        (tmp_path / name).mkdir()
        for file in embedded_adapter(adapter).iterdir():
            (tmp_path / name / file.name).write_bytes(file.read_bytes())
    for name, picture in PICTURES.items():
        (tmp_path / name).write_bytes(embedded_picture(picture).read_bytes())
    (tmp_path / "batch.toml").write_text(PLAN, encoding="utf-8")
    for argv in commands(block):
        args = argv[1:] + EXTRA.get(argv[1], [])
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"README line {line_no}: {shlex.join(argv)}\n{result.output}"
