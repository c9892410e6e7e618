"""Hostile inputs, the guards on plans and workspaces (issue 26): what a batch plan or a
ggufkit.toml names stays inside its folder, whatever the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufkit.core.errors import WorkspaceError
from ggufkit.workspace.batch.plan import load_plan
from ggufkit.workspace.config import WorkspaceConfig

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _plan(folder: Path, model_lines: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "batch.toml"
    text = f'types = ["q4_0"]\n{extra}[[models]]\nsource = "owner/model"\n{model_lines}'
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "line",
    [
        'chat_template = "{secret}"',  # an absolute path: the user's token
        'chat_template = "../secret/token"',
        'chat_template = "~/token"',
    ],
)
def test_a_plan_cannot_read_files_outside_its_folder(tmp_path: Path, line: str) -> None:
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("hf_secret_token", encoding="utf-8")
    plan = _plan(tmp_path / "plans", line.format(secret=secret.as_posix()) + "\n")
    with pytest.raises(WorkspaceError, match="chat_template") as caught:
        load_plan(plan)
    assert "hf_secret_token" not in str(caught.value)


@pytest.mark.posix_only  # symlinks need a privilege on Windows
def test_a_link_out_of_the_plans_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("hf_secret_token", encoding="utf-8")
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "template.jinja").symlink_to(secret)
    with pytest.raises(WorkspaceError, match="leads out"):
        load_plan(_plan(folder, 'chat_template = "template.jinja"\n'))


@pytest.mark.parametrize(
    ("extra", "what"),
    [('outdir = "../elsewhere"\n', "outdir"), ('outdir = "/tmp/x"\n', "outdir")],
)
def test_a_plan_writes_only_inside_its_folder(tmp_path: Path, extra: str, what: str) -> None:
    with pytest.raises(WorkspaceError, match=what):
        load_plan(_plan(tmp_path, "", extra))


def test_plan_paths_are_taken_from_the_plans_folder_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "chat.jinja").write_text(TEMPLATE, encoding="utf-8")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "chat.jinja").write_text("the wrong one", encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    plan = load_plan(
        _plan(folder, 'chat_template = "chat.jinja"\n', '[eval]\ncorpus = "chat.jinja"\n')
    )
    chosen = plan.models[0].chat_template
    assert chosen is not None and Path(chosen) == folder / "chat.jinja"
    assert plan.eval.corpus == folder / "chat.jinja"
    assert Path(chosen).read_text(encoding="utf-8") == TEMPLATE


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('name = "../../x"', "name"),
        ('name = "a/b"', "name"),
        ('name = "x"\noutdir = "../../out"', "outdir"),
        ('name = "x"\noutdir = "/tmp/out"', "outdir"),
    ],
)
def test_a_workspace_names_only_files_inside_it(tmp_path: Path, line: str, what: str) -> None:
    config = tmp_path / "ggufkit.toml"
    config.write_text(f'source = "owner/model"\n{line}\n', encoding="utf-8")
    with pytest.raises(WorkspaceError, match=f"`{what}`"):
        WorkspaceConfig.from_toml(config)
