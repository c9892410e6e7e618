"""The set-up entry point (`python tools/dev.py`): the same on every OS, make only a shortcut, and
outside the package (the wheel holds no developer code)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load_dev() -> ModuleType:
    """tools/dev.py, a file of the checkout (never imported from the package)."""
    spec = importlib.util.spec_from_file_location("dev", ROOT / "tools" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _load_dev()


def test_install_pins_torch_first_and_fastchat_without_dependencies() -> None:
    steps = dev.install_steps(Path("py"))
    packages = [step[-1] for step in steps]
    assert packages == ["pip", "torch==2.13.0", ".[torch,bnb,ray,dev]", "fschat==0.2.36"]
    assert steps[2][-2] == "-e" and steps[3][-2] == "--no-deps"


def test_virtual_environment_layout_per_os() -> None:
    assert dev.scripts_dir(Path("v"), "win32") == Path("v") / "Scripts"
    assert dev.scripts_dir(Path("v"), "linux") == Path("v") / "bin"
    assert dev.tool("python", "win32").name == "python.exe"
    assert dev.tool("python", "darwin").name == "python"


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for section in ("## Install", "## Tests and platforms"):
        block = readme.split(section, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
        commands += [line.split("#")[0].strip() for line in block.strip().splitlines()]
    return commands


def test_the_readme_commands_are_the_entry_point_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert commands == [f"python tools/dev.py {c}" for c in ("install", "build", "test")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # CI runs `make test`, whose recipe is the README's command (checked below).
    assert re.search(r"^make test\b", ci, re.M) and re.search(r"^make lint\b", ci, re.M)
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    for command in commands:
        assert command in workflow
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("install", "build", "test", "test-fast", "lint", "demo"):
        recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert f"$(DEV) {target}" in recipe, target


def test_the_entry_point_runs_on_a_bare_python_and_names_its_commands() -> None:
    # -S: no site-packages; the module needs nothing beyond the standard library.
    done = subprocess.run(
        [sys.executable, "-S", "-I", str(ROOT / "tools" / "dev.py"), "nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "python tools/dev.py test" in done.stderr and "lint" in done.stderr


def test_the_gpu_check_script_parses_and_explains_itself() -> None:
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    done = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    for words in ("--prepare DIR", "tree.sha256", "CMAKE_CUDA_ARCHITECTURES", "nf4-dq"):
        assert words in done.stdout


def test_install_leaves_the_package_precompiled() -> None:
    """The editable install's modules get their bytecode (`ggufkit quantize` would otherwise
    compile them on every start where PYTHONDONTWRITEBYTECODE is set)."""
    import importlib.util

    subprocess.run(dev.precompile_step(Path(sys.executable)), check=True)
    sources = sorted((ROOT / "ggufkit").rglob("*.py"))
    assert sources
    missing = [s for s in sources if not Path(importlib.util.cache_from_source(str(s))).is_file()]
    assert missing == []


def test_the_package_holds_no_developer_code() -> None:
    """The set-up and the tokenizer recipe of the tests and scripts are files of the checkout:
    nothing in the package (so nothing in the wheel) and nothing there imports them."""
    package = ROOT / "ggufkit"
    assert not (package / "dev.py").exists()
    assert not (package / "data" / "tokenizer_training.py").exists()
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "tokenizer_training" not in text and "ggufkit.dev" not in text, path
