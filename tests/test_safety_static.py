"""Static guarantees over the package source: no shell strings, no pickle, no implicit remote code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ggufkit"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_source_file(path: Path) -> None:
    for func, call in _calls(path):
        where = f"{path.relative_to(PACKAGE)}:{call.lineno}"
        shell = _keyword(call, "shell")
        assert not (isinstance(shell, ast.Constant) and shell.value is True), (
            f"shell=True at {where}"
        )
        assert func not in (
            "os.system",
            "os.popen",
            "subprocess.getoutput",
            "subprocess.getstatusoutput",
        ), where
        if func.startswith("subprocess.") and call.args:
            assert not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), (
                f"command string at {where}"
            )
        assert func not in ("pickle.load", "pickle.loads", "dill.load"), f"pickle at {where}"
        if func.endswith("torch.load"):
            weights_only = _keyword(call, "weights_only")
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, (
                f"torch.load without weights_only=True at {where}"
            )
        remote = _keyword(call, "trust_remote_code")
        assert not (isinstance(remote, ast.Constant) and remote.value is True), (
            f"trust_remote_code=True at {where}"
        )


def test_the_scan_sees_the_package() -> None:
    assert len(SOURCES) > 30
    assert any(func.endswith("torch.load") for p in SOURCES for func, _ in _calls(p))


POSIX_ONLY_MODULES = {"resource", "fcntl", "termios", "pwd", "grp", "posix", "tty", "pty"}


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_no_posix_only_import_at_module_level(path: Path) -> None:
    """ggufkit imports on Windows: POSIX-only modules are imported inside the function that
    needs them, behind a check (e.g. the chat-template child's RLIMIT_AS)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        for name in names:
            assert name not in POSIX_ONLY_MODULES, f"{path.relative_to(PACKAGE)}:{node.lineno}"
