"""A user's first hour (issue 30): each mistake a new user met, as a test that failed before."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.data import embedded_model

QUIET_ENV = (
    "TRANSFORMERS_VERBOSITY",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "TOKENIZERS_PARALLELISM",
    "GGUFKIT_LOG_LEVEL",
)


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """-q sets these for the process and its children: restored after the test."""
    for name in QUIET_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["status", "publish"])
def test_status_and_publish_outside_a_workspace_ask_for_no_model(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [command] if command == "status" else [command, "me/x-GGUF", "--dry-run"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "give the model" not in result.output and "no model given" not in result.output
    assert "ggufkit init SOURCE" in result.output


def test_quiet_and_verbose_work_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_env: None
) -> None:
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli, ["status", "-v"]).exit_code == 1  # no workspace, no usage error
    result = CliRunner().invoke(cli, ["status", "-q"])
    assert result.exit_code == 1, result.output  # was 2: "No such option: -q"
    # the libraries' chatter is silenced too, here and in the children
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_quiet_silences_the_libraries_chatter(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    quiet_env: None,
) -> None:
    """gguf-py's vocabulary note reached stderr with -q (and -q after the command was refused)."""
    monkeypatch.chdir(tmp_path)
    base = str(embedded_model("tiny-llama"))

    def chatter() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("gguf.")]

    assert CliRunner().invoke(cli, ["convert", base, "-o", "a.gguf"]).exit_code == 0
    assert any("Unknown separator token" in m for m in chatter())  # the chatter, without -q
    caplog.clear()
    quiet = CliRunner().invoke(cli, ["convert", base, "-o", "b.gguf", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert chatter() == []
    assert quiet.stderr.startswith("chat template: none written")  # ggufkit's one warning
    assert quiet.stderr.count("\n") == 1
    CliRunner().invoke(cli, ["status", "-v"])  # back to the default for the other tests


def test_a_missing_corpus_exits_as_a_missing_gguf(tmp_path: Path) -> None:
    missing_gguf = CliRunner().invoke(cli, ["eval", str(tmp_path / "no.gguf"), "--no-speed"])
    missing_corpus = CliRunner().invoke(
        cli, ["eval", str(tmp_path / "no.gguf"), "--corpus", str(tmp_path / "no.txt")]
    )
    assert "does not exist" in missing_gguf.output and "corpus" in missing_corpus.output
    assert missing_gguf.exit_code == missing_corpus.exit_code == 1


def test_convert_names_the_exact_sum_and_says_the_template_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta's note names an option that exists; the chat-template note is on stderr only."""
    monkeypatch.chdir(tmp_path)
    delta, base = embedded_model("tiny-llama-milton-delta"), embedded_model("tiny-llama")
    result = CliRunner().invoke(cli, ["convert", str(delta), "--delta-base", str(base)])
    assert result.exit_code == 0, result.output
    assert "--dtype f32 for an exact sum" not in result.output
    assert "`merge-delta --dtype f32` first" in result.stderr
    assert (tmp_path / "tiny-llama-milton-delta-F16.gguf").is_file()
    plain = CliRunner().invoke(cli, ["convert", str(base)])
    assert plain.exit_code == 0, plain.output
    assert "chat template" not in plain.stdout and plain.stderr.count("chat template") == 1


def test_the_workspace_takes_the_plans_chat_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ggufkit.toml has the batch plan's `chat_template`, and convert's hint names real keys."""
    from ggufkit.workspace import WorkspaceConfig

    toml = tmp_path / "ggufkit.toml"
    toml.write_text('source = "m"\nname = "m"\nchat_template = "vicuna_v1.1"\n', encoding="utf-8")
    assert WorkspaceConfig.from_toml(toml).chat_template == "vicuna_v1.1"  # was: unknown setting
    assert "chat_template" in WorkspaceConfig("m", "m").to_toml()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["convert", "--chat-template", "one_shot"])
    assert result.exit_code == 2 and "chat_template" in result.output


def test_the_bnb_record_holds_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's command for `ggufkit bnb` is the command line with every option it ran with
    (it dropped --compute-dtype, --quant-storage, --skip-modules, ...)."""
    from types import SimpleNamespace

    import ggufkit.cli.bnb as bnb_cli
    from ggufkit.bnb import BnbReport

    recorded: list[list[str]] = []
    monkeypatch.setattr(bnb_cli, "run_bnb", lambda model, options: _empty_report(BnbReport))
    monkeypatch.setattr(
        bnb_cli,
        "record_in_workspace",
        lambda *a, command, **k: recorded.append(list(command)) or tmp_path,
    )
    workspace = SimpleNamespace(manifest_path=tmp_path / "manifest.json")
    monkeypatch.setattr(bnb_cli, "workspace_model", lambda model: (model, workspace))
    monkeypatch.setattr(bnb_cli, "markdown", lambda report: "")
    args = ["--modes", "nf4", "--compute-dtype", "f32", "--quant-storage", "int8"]
    args += ["--skip-modules", "lm_head", "--int8-threshold", "5.0", "--ctx", "32"]
    args += ["--chunks", "1", "--seed", "3", "--corpus", str(embedded_text_path())]
    model = str(embedded_model("tiny-llama"))
    result = CliRunner().invoke(cli, ["bnb", model, *args])
    assert result.exit_code == 0, result.output
    command = recorded[-1]
    assert command[:3] == ["ggufkit", "bnb", model]
    for option in ("--compute-dtype", "--quant-storage", "--skip-modules", "--int8-threshold"):
        assert option in command
    for option in ("--corpus", "--ctx", "--chunks", "--seed"):
        assert option in command
    # and it reads back as the same options
    again = CliRunner().invoke(cli, ["bnb", *command[2:]])
    assert again.exit_code == 0 and recorded[-1] == command


def embedded_text_path() -> Path:
    from ggufkit.data import default_corpus

    return default_corpus()


def _empty_report(kind: type) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(failed=[], compute_dtype="f32", device="cpu")


@pytest.mark.slow
@pytest.mark.needs_llamacpp
def test_a_workspace_as_the_readme_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init q4_0,q8_0 + convert + quantize: both types made, named as convert names files, an
    existing output refused outside the workspace without --force, the recorded commands
    replayed to the same bytes, and the card free of the local path."""
    source = tmp_path / "models" / "tiny"
    shutil.copytree(embedded_model("tiny-llama"), source)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()
    done = runner.invoke(cli, ["init", str(source), "--types", "q4_0,q8_0"])  # an absolute path
    assert done.exit_code == 0, done.output
    with (work / "ggufkit.toml").open("a", encoding="utf-8") as toml:
        toml.write("\n[imatrix]\nctx = 64\nchunks = 2\n")  # as a batch plan has it
    for args in (["convert"], ["quantize"]):
        done = runner.invoke(cli, args)
        assert done.exit_code == 0, (args, done.output)
    out = work / "out"
    assert (out / "tiny-F16.gguf").is_file()  # was tiny-f16.gguf beside convert's X-F16.gguf
    from ggufkit.workspace import Workspace

    assert [s.state for s in Workspace.require(work).status()] == ["up to date"] * 3

    again = runner.invoke(
        cli, ["quantize", "out/tiny-F16.gguf", "q8_0", "-o", "out/tiny-Q8_0.gguf"]
    )
    assert again.exit_code == 2 and "already exists" in again.output  # was replaced silently

    manifest = json.loads((out / "manifest.json").read_text())["artefacts"]
    assert "tiny-imatrix.gguf" in manifest
    assert "--imatrix" in manifest["tiny-Q4_0.gguf"]["command"]
    for name in ("tiny-F16.gguf", "tiny-Q8_0.gguf"):
        record = manifest[name]
        (out / name).rename(out / f"{name}.before")
        replay = runner.invoke(cli, shlex.split(shlex.join(record["command"]))[1:])
        assert replay.exit_code == 0, (record["command"], replay.output)
        assert sha256(out / name) == record["sha256"], record["command"]
        (out / f"{name}.before").replace(out / name)

    assert runner.invoke(cli, ["eval", "--chunks", "2", "--no-speed"]).exit_code == 0
    dry = runner.invoke(cli, ["publish", "me/tiny-GGUF", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    card = dry.stdout.split("\n--- README.md ---\n")[1]
    assert str(tmp_path) not in card and "`tiny`" in card


@pytest.mark.needs_torch
def test_verify_shows_no_transformers_bar() -> None:
    """transformers' "Loading weights" bar is off once verify imports it (ggufkit's own progress)."""
    import transformers

    from ggufkit.inference.parity import _import_transformers

    transformers.utils.logging.enable_progress_bar()
    _import_transformers()
    assert not transformers.utils.logging.is_progress_bar_enabled()


@pytest.mark.needs_llamacpp
def test_run_json_records_flash_attention(tmp_path: Path) -> None:
    model = tmp_path / "tiny-Q8_0.gguf"
    done = CliRunner().invoke(
        cli, ["convert", str(embedded_model("tiny-llama")), "--outtype", "q8_0", "-o", str(model)]
    )
    assert done.exit_code == 0, done.output
    run = CliRunner().invoke(
        cli, ["run", str(model), "-p", "Once", "-n", "2", "--json", "--flash-attn", "off"]
    )
    assert run.exit_code == 0, run.output
    data = json.loads(run.stdout)
    assert data["flash_attn"] == "off" and data["flash_attn_resolved"] == "off"


def test_batch_help_holds_the_plan_format() -> None:
    """The README says the plan's format is in `ggufkit batch --help`: it is."""
    result = CliRunner().invoke(cli, ["batch", "--help"])
    for key in ("[[models]]", "delta_base", "chat_template", "[imatrix]", "[eval]", "[publish]"):
        assert key in result.output, key
