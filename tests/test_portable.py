"""Linux, macOS and Windows: the defects a first Windows or macOS user would hit, emulated here.

Windows text-mode writes, POSIX-only imports, MSVC found without `cl` on PATH, CMake's forward
slashes, case-insensitive disks, files held open, locale-decoded tool output.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest

from ggufkit.core import fsutil
from ggufkit.core.errors import GGUFKitError, ToolMissingError, UsageError
from ggufkit.data import embedded_model
from ggufkit.llamacpp import build as build_module
from ggufkit.llamacpp import toolchain

PACKAGE = Path(__file__).resolve().parent.parent / "ggufkit"
POSIX_ONLY_MODULES = {"resource", "fcntl", "termios", "pwd", "grp"}


# --- the writer on a platform with a text mode and no pwrite -----------------------------------


def test_gguf_written_through_os_write_with_o_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on Windows: no pwrite, and O_BINARY defined; the file is byte-identical to pwrite's."""
    from ggufkit.convert import convert

    model = embedded_model("tiny-llama")
    reference = tmp_path / "pwrite.gguf"
    convert(model, reference, outtype="f16")

    fake_binary = 0x40000000  # a bit Linux ignores on open(2) here; stripped below anyway
    monkeypatch.setattr(os, "O_BINARY", fake_binary, raising=False)
    monkeypatch.delattr(os, "pwrite")
    seen: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        seen.append(flags)
        return real_open(path, flags & ~fake_binary, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    written = tmp_path / "write.gguf"
    convert(model, written, outtype="f16")
    assert seen and all(flags & fake_binary for flags in seen)
    assert written.read_bytes() == reference.read_bytes()


# --- POSIX-only modules -----------------------------------------------------------------------


def _guarded(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return "sys.platform" in text or "os.name" in text or "TYPE_CHECKING" in text


def _unguarded_imports(body: list[ast.stmt]) -> list[tuple[int, str]]:
    """Imports that run when the module is imported (not in a function, a platform test or a
    try/except ImportError)."""
    found: list[tuple[int, str]] = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.If) and not _guarded(node.test):
            found += _unguarded_imports(node.body) + _unguarded_imports(node.orelse)
        elif isinstance(node, ast.Try):
            catches = {ast.unparse(h.type) if h.type else "" for h in node.handlers}
            if not catches & {"ImportError", "ModuleNotFoundError", "(ImportError, OSError)"}:
                found += _unguarded_imports(node.body)
        elif isinstance(node, ast.ClassDef | ast.With):
            found += _unguarded_imports(node.body)
    return found


def test_the_syntax_check_sees_an_unguarded_import() -> None:
    tree = ast.parse(
        "import resource\nif sys.platform != 'win32':\n    import fcntl\n"
        "try:\n    import pwd\nexcept ImportError:\n    pwd = None\n"
        "def f():\n    import termios\n"
    )
    assert _unguarded_imports(tree.body) == [(1, "resource")]


def test_no_module_imports_a_posix_only_module_unguarded() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, name in _unguarded_imports(tree.body):
            if name in POSIX_ONLY_MODULES:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: import {name}")
    assert bad == []


HELP_WITH_POSIX_MODULES_BLOCKED = """
import builtins, sys
BLOCKED = {blocked!r}
real_import = builtins.__import__

def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    # As on Windows, for ggufkit's own imports only: psutil imports resource itself.
    importer = (globals or {{}}).get("__name__", "")
    if importer.startswith("ggufkit") and name.split(".")[0] in BLOCKED:
        raise ModuleNotFoundError(f"No module named {{name!r}}")
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded_import
try:
    exec("import resource", {{"__name__": "ggufkit.probe"}})
    raise SystemExit("the block does not work")
except ModuleNotFoundError:
    pass
from click.testing import CliRunner
from ggufkit.cli import COMMANDS, cli
runner = CliRunner()
names = sorted(COMMANDS)
for args in [["--help"], *([name, "--help"] for name in names)]:
    result = runner.invoke(cli, args)
    if result.exit_code != 0 or "Usage:" not in result.output:
        raise SystemExit(f"{{args}}: exit {{result.exit_code}}\\n{{result.output}}{{result.exception!r}}")
print(len(names), "commands")
"""


def test_every_help_prints_with_posix_only_modules_blocked() -> None:
    code = HELP_WITH_POSIX_MODULES_BLOCKED.format(blocked=sorted(POSIX_ONLY_MODULES))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[0]) >= 15


# --- the toolchain ----------------------------------------------------------------------------


def test_msvc_is_found_through_vswhere_without_cl_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    locator = tmp_path / "Microsoft Visual Studio" / "Installer" / "vswhere.exe"
    locator.parent.mkdir(parents=True)
    locator.write_bytes(b"")
    environ = {"ProgramFiles(x86)": str(tmp_path)}
    found = toolchain.find_compiler("win32", environ)
    assert "Visual Studio" in found and str(locator) in found
    with pytest.raises(ToolMissingError, match="vswhere"):
        toolchain.find_compiler("win32", {})
    with pytest.raises(ToolMissingError) as caught:
        toolchain.find_compiler("linux", environ)  # only Windows has the VS generator
    assert "vswhere" not in caught.value.message


def test_a_cmake_cache_with_forward_slashes_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CMake writes C:/src/llama.cpp for C:\\src\\llama.cpp: the same source, no wipe."""
    source = PureWindowsPath(r"C:\src\llama.cpp")
    root = tmp_path / "builds" / "k"
    cache = root / "cmake" / "CMakeCache.txt"
    cache.parent.mkdir(parents=True)

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(build_module, "find_cmake", lambda: "cmake")
    monkeypatch.setattr(build_module, "find_compiler", lambda: "c++")
    monkeypatch.setattr(build_module, "ensure_source", lambda pin: source)
    monkeypatch.setattr(build_module, "run_tool", stop)
    pin, cpu = build_module.read_pin(), build_module.detect_cpu()
    options = build_module.layout.BuildOptions()
    for home, kept in (("C:/src/llama.cpp", True), ("C:/elsewhere/llama.cpp", False)):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={home}\n")
        with pytest.raises(Stop):
            build_module._build_into(root, pin, "k", options, 1, cpu)
        assert cache.is_file() == kept, home


# --- files: case-insensitive disks, held files, memory maps, odd names ---------------------------


def _fake_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_names_differing_only_in_case_are_one_file(tmp_path: Path) -> None:
    from ggufkit.quantize import same_file

    source = _fake_gguf(tmp_path / "model-q8_0.gguf")
    assert same_file(tmp_path / "model-Q8_0.gguf", source)
    assert same_file(tmp_path / "sub" / ".." / "MODEL-Q8_0.GGUF", source)
    assert not same_file(tmp_path / "model-Q4_0.gguf", source)
    os.link(source, tmp_path / "linked.gguf")
    assert same_file(tmp_path / "linked.gguf", source)


def test_quantize_refuses_an_output_that_is_its_input_on_another_disk(tmp_path: Path) -> None:
    from ggufkit.quantize import plan_outputs
    from ggufkit.quantize.types import QuantType, TypeTable

    source = _fake_gguf(tmp_path / "model-q8_0.gguf")
    table = TypeTable((QuantType("Q8_0", 7, "", 8.5), QuantType("Q4_0", 2, "", 4.5)), "t")
    with pytest.raises(UsageError, match="differ only in case"):
        plan_outputs(source, [table.types[0]], table)
    with pytest.raises(UsageError, match="same file as the input"):
        plan_outputs(source, [table.types[1]], table, output=tmp_path / "MODEL-Q8_0.gguf")
    assert plan_outputs(source, [table.types[1]], table) == [tmp_path / "model-Q4_0.gguf"]


def test_replace_retries_a_held_file_then_names_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    failures = [2]

    def held(src: object, dst: object) -> None:
        if failures[0]:
            failures[0] -= 1
            raise PermissionError(13, "Access is denied")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "replace", held)
    final = tmp_path / "out.gguf"
    with fsutil.atomic_output(final) as tmp:
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data" and failures == [0]

    failures[0] = 10**6
    with (
        pytest.raises(GGUFKitError, match="cannot replace") as caught,
        fsutil.atomic_output(final) as tmp,
    ):
        tmp.write_bytes(b"new")
    assert "close the program" in (caught.value.hint or "")
    assert final.read_bytes() == b"data" and not list(tmp_path.glob("*.partial"))


def test_checkpoint_close_closes_maps_whose_views_sit_in_a_cycle(tmp_path: Path) -> None:
    from ggufkit.formats.safetensors import Checkpoint

    checkpoint = Checkpoint.open(embedded_model("tiny-llama"))
    name = checkpoint.names()[0]
    view = checkpoint.read(name)
    maps = list(checkpoint._maps.values())
    assert maps
    cycle: list[object] = [view]
    cycle.append(cycle)  # only the garbage collector frees this view
    del view, cycle
    checkpoint.close()
    assert all(m.closed for m in maps)


@pytest.mark.needs_llamacpp
def test_paths_with_spaces_and_non_ascii_characters(tmp_path: Path) -> None:
    from ggufkit.convert import convert
    from ggufkit.formats.gguf_reader import check_gguf
    from ggufkit.quantize import quantize

    folder = tmp_path / "my models" / "modèle ünïcødé 模型"
    f16 = folder / "tiny llama-F16.gguf"
    convert(embedded_model("tiny-llama"), f16, outtype="f16")
    out = quantize(f16, ["q8_0"])[0].output
    assert out.parent == folder and out.name == "tiny llama-Q8_0.gguf"
    check_gguf(out)


def test_tool_output_is_decoded_as_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the locale's code page (Windows): "±" and non-ASCII paths arrive intact."""
    from ggufkit.llamacpp import runner

    seen: dict[str, object] = {}
    real_popen = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real_popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(runner.subprocess, "Popen", recording)
    code = "import sys; sys.stdout.buffer.write('ppl 6.1 \\u00b1 0.2 in modèle'.encode())"
    result = runner.run_tool([sys.executable, "-c", code], what="a tool")
    assert seen["encoding"] == "utf-8"
    assert result.stdout == "ppl 6.1 ± 0.2 in modèle"


def test_doctor_names_the_generator_used_without_ninja(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggufkit import doctor

    monkeypatch.setattr(shutil, "which", lambda name: None)
    check = doctor.check_ninja()
    assert not check.ok and "make" not in check.detail and "CMake's default" in check.detail
