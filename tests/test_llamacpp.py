"""The pinned llama.cpp: lock, checksum, unpacking, CMake layouts per platform, the build cache."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import ChecksumError, InputError, ToolMissingError
from ggufkit.llamacpp import build as build_module
from ggufkit.llamacpp import layout
from ggufkit.llamacpp.cpu import CpuInfo
from ggufkit.llamacpp.patches import patches_digest
from ggufkit.llamacpp.source import (
    STAMP,
    SourcePin,
    fetch_sdist,
    read_pin,
    source_stamp,
    unpack_subdir,
    verify_sha256,
)


def test_lock_pins_the_sdist() -> None:
    pin = read_pin()
    assert (pin.package, pin.version) == ("llama-cpp-python", "0.3.36")
    assert pin.sha256 == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    assert pin.subdir == "vendor/llama.cpp"


def test_tampered_sdist_is_an_error(tmp_path: Path) -> None:
    pin = read_pin()
    tampered = tmp_path / pin.sdist_name
    tampered.write_bytes(b"not the real sdist")
    with pytest.raises(ChecksumError, match="sha256"):
        fetch_sdist(pin, dest_dir=tmp_path)
    with pytest.raises(ChecksumError):
        verify_sha256(tampered, pin.sha256)


def test_tampered_sdist_fails_the_build_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    monkeypatch.setenv("GGUFKIT_LLAMA_CPP_SRC", str(tmp_path / "src"))
    pin = read_pin()
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / pin.sdist_name).write_bytes(b"tampered")
    result = CliRunner().invoke(cli, ["build", "--no-bindings"])
    assert result.exit_code == 1
    assert "sha256" in result.output and "delete" in result.output
    assert not (tmp_path / "src").exists()


def _sdist(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_unpack_takes_only_the_subdir(tmp_path: Path) -> None:
    sdist = _sdist(
        tmp_path,
        {
            "pkg-1.0/setup.py": b"x",
            "pkg-1.0/vendor/llama.cpp/CMakeLists.txt": b"cmake",
            "pkg-1.0/vendor/llama.cpp/src/a.c": b"a",
        },
    )
    dest = tmp_path / "out"
    unpack_subdir(sdist, "vendor/llama.cpp", dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "CMakeLists.txt",
        "src/a.c",
    ]


def test_unpack_refuses_escaping_members(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path, {"pkg-1.0/vendor/llama.cpp/../../../evil": b"x"})
    with pytest.raises(InputError):
        unpack_subdir(sdist, "vendor/llama.cpp", tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out").exists()


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("platform", "tool", "library"),
    [
        ("linux", "bin/llama-quantize", "bin/libllama.so"),
        ("darwin", "bin/llama-quantize", "bin/libllama.dylib"),
        ("win32", "bin/Release/llama-quantize.exe", "bin/Release/llama.dll"),
        ("win32", "bin/llama-quantize.exe", "bin/llama.dll"),
        ("linux", "bin/llama-quantize", "src/libllama.so"),
    ],
)
def test_discovery_in_each_cmake_layout(
    tmp_path: Path, platform: str, tool: str, library: str
) -> None:
    expected_tool = _touch(tmp_path / tool)
    expected_lib = _touch(tmp_path / library)
    _touch(tmp_path / "bin" / "unrelated.txt")
    assert layout.find_binary(tmp_path, "llama-quantize", platform) == expected_tool
    assert layout.find_library(tmp_path, "llama", platform) == expected_lib
    assert layout.find_binary(tmp_path, "llama-bench", platform) is None


def test_discovery_ignores_the_other_platforms_names(tmp_path: Path) -> None:
    _touch(tmp_path / "bin" / "llama-quantize.exe")
    _touch(tmp_path / "bin" / "libllama.so")
    assert layout.find_binary(tmp_path, "llama-quantize", "linux") is None
    assert layout.find_library(tmp_path, "llama", "win32") is None


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_cmake_arguments_per_platform(tmp_path: Path, platform: str) -> None:
    options = layout.BuildOptions(cuda=True, extra_cmake_args=("-DGGML_VULKAN=ON",))
    args = layout.configure_args(
        tmp_path / "src",
        tmp_path / "build",
        options,
        cpu=CpuInfo("x86_64", frozenset({"avx2"})),
        platform=platform,
        generator="Ninja",
    )
    assert args[:6] == ["-S", str(tmp_path / "src"), "-B", str(tmp_path / "build"), "-G", "Ninja"]
    for flag in (
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_CURL=OFF",
        "-DGGML_CUDA=ON",
        "-DLLAMA_BUILD_SERVER=OFF",
    ):
        assert flag in args
    assert args[-1] == "-DGGML_VULKAN=ON"
    rpath = {"linux": "-DCMAKE_BUILD_RPATH=$ORIGIN", "darwin": "-DCMAKE_BUILD_RPATH=@loader_path"}
    if platform in rpath:
        assert rpath[platform] in args
    else:
        assert any(a.startswith("-DCMAKE_RUNTIME_OUTPUT_DIRECTORY=") for a in args)
    build = layout.build_args(tmp_path / "build", options, jobs=3)
    assert build[:6] == ["--build", str(tmp_path / "build"), "--config", "Release", "-j", "3"]
    assert set(layout.TOOLS) <= set(build) and "llama" in build


def test_build_key_depends_on_flags_and_platform() -> None:
    pin = read_pin()
    plain = build_module.build_key(pin, layout.BuildOptions(), "linux-x86_64")
    assert plain == build_module.build_key(pin, layout.BuildOptions(), "linux-x86_64")
    assert plain != build_module.build_key(pin, layout.BuildOptions(cuda=True), "linux-x86_64")
    assert plain != build_module.build_key(pin, layout.BuildOptions(), "darwin-arm64")
    other = SourcePin(pin.package, pin.version, "0" * 64, pin.subdir, pin.llama_cpp_commit)
    assert plain != build_module.build_key(other, layout.BuildOptions(), "linux-x86_64")


def _fake_build(home: Path) -> Path:
    """A complete-looking cached build for the default options, made without compiling."""
    key = build_module.build_key(read_pin(), layout.BuildOptions())
    root = home / "builds" / key
    tree = root / "cmake"
    tools = {name: _touch(tree / "bin" / name) for name in layout.TOOLS}
    library = _touch(tree / "bin" / "libllama.so")
    info = build_module.BuildInfo(
        key, tree, tools, library, "0c1e57098", read_pin().sha256, {}, "test", 1.0
    )
    (root / build_module.STAMP_NAME).write_text(json.dumps(info.to_json()))
    return root


def test_second_build_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    _fake_build(tmp_path)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached build ran a tool")

    monkeypatch.setattr(build_module, "run_tool", must_not_run)
    info = build_module.build(bindings=False)
    assert info.cached
    assert build_module.find_tool("llama-quantize") == info.tools["llama-quantize"]


def test_corrupted_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    root = _fake_build(tmp_path)
    (root / "cmake" / "bin" / "llama-bench").unlink()
    rebuilt: list[object] = []
    monkeypatch.setattr(build_module, "_build_into", lambda *a, **k: rebuilt.append(a) or "rebuilt")
    assert build_module.build(bindings=False) == "rebuilt"
    assert len(rebuilt) == 1
    (root / build_module.STAMP_NAME).write_text("{not json")
    with pytest.raises(ToolMissingError, match="not built"):
        build_module.current_build()


def test_a_build_older_than_a_tool_is_built_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    root = _fake_build(tmp_path)
    stamp = json.loads((root / build_module.STAMP_NAME).read_text())
    del stamp["tools"]["llama-mtmd-cli"]  # a build made before llama-mtmd-cli joined TOOLS
    (root / build_module.STAMP_NAME).write_text(json.dumps(stamp))
    # still usable for what it has, while nobody has built on it
    assert build_module.find_tool("llama-quantize") == root / "cmake" / "bin" / "llama-quantize"
    built: list[tuple[object, ...]] = []
    monkeypatch.setattr(build_module, "_build_into", lambda *a, **k: built.append(a) or "built")
    assert build_module.build(bindings=False) == "built"
    assert built[0][0] == root  # the same tree: ninja compiles only the new targets


def test_no_cmake_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "cmake", None)
    with pytest.raises(ToolMissingError, match="cmake") as caught:
        build_module.find_cmake()
    assert "pip install cmake" in (caught.value.hint or "")
    with pytest.raises(ToolMissingError, match="compiler"):
        build_module.find_compiler()


def test_failing_cmake_reports_tail_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    monkeypatch.setenv("GGUFKIT_LLAMA_CPP_SRC", str(tmp_path / "src"))
    broken = tmp_path / "src"
    broken.mkdir()
    (broken / "CMakeLists.txt").write_text(
        'cmake_minimum_required(VERSION 3.14)\nproject(x)\nmessage(FATAL_ERROR "deliberately broken")\n'
    )
    (broken / STAMP).write_text(source_stamp(read_pin(), patches_digest()) + "\n")
    result = CliRunner().invoke(cli, ["build", "--no-bindings"])
    assert result.exit_code == 1
    assert "CMake configure failed" in result.output
    assert "deliberately broken" in result.output
    assert "full log:" in result.output


@pytest.mark.needs_llamacpp
def test_doctor_json_reports_the_build() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["llama.cpp build"]["ok"] is True
    assert checks["llama-cpp-python"]["ok"] is True
    selftest = checks["llama.cpp self-test"]
    assert selftest["ok"] is True, selftest
    assert sorted(selftest["data"]["perplexity"]) == ["Q4_0", "Q4_K_M", "Q8_0"]
    assert selftest["data"]["threads"] >= 2
    assert result.exit_code == 0


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_quantize_with_built_binary_and_load_through_bindings(
    tmp_path: Path, tiny_llama_gqa_dir: Path
) -> None:
    """The foundation's proof: upstream-converted GGUF -> built llama-quantize -> llama_cpp on our libllama."""
    import tiny

    from ggufkit.llamacpp.build import find_tool
    from ggufkit.llamacpp.isolate import run_isolated
    from ggufkit.llamacpp.runner import run_tool

    f16 = tiny.upstream_convert(tiny_llama_gqa_dir, tmp_path / "m-f16.gguf")
    q4 = tmp_path / "m-q4_0.gguf"
    run_tool([find_tool("llama-quantize"), f16, q4, "q4_0", "1"], what="llama-quantize")
    assert 0 < q4.stat().st_size < f16.stat().st_size
    # In a child process: a kernel that crashes fails this test, not the whole run.
    lib_dir, tokens, n_evaluated = run_isolated(tiny.bindings_eval, str(q4), what="llama_cpp")
    assert lib_dir == str(build_module.current_build().lib_dir)
    assert tokens[0] == 1 and len(tokens) > 3
    assert n_evaluated == len(tokens)


def test_bindings_import_is_thread_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads loading the bindings at once (batch: two imatrix steps) both get the whole
    module; the second must not take the half-initialised one from sys.modules."""
    import threading
    import types

    from ggufkit.llamacpp import bindings

    package = tmp_path / "llama_cpp"
    package.mkdir()
    # Slow to import, as the real bindings are (they load libllama): Llama comes last.
    (package / "__init__.py").write_text("import time\ntime.sleep(0.5)\nLlama = object\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bindings, "_loaded", None)
    monkeypatch.setattr(bindings, "current_build", lambda: types.SimpleNamespace(lib_dir=tmp_path))
    monkeypatch.setattr(bindings, "route_llama_log", lambda module: None)
    monkeypatch.setattr("ggufkit.llamacpp.chat_deferred.defer_chat_templates", lambda module: None)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    got: list[object] = []

    def load() -> None:
        got.append(getattr(bindings.load_llama_cpp(), "Llama", None))

    real = sys.modules.pop("llama_cpp", None)
    try:
        threads = [threading.Thread(target=load) for _ in range(2)]
        threads[0].start()
        time.sleep(0.1)  # the first thread is inside the import
        threads[1].start()
        for thread in threads:
            thread.join()
    finally:
        sys.modules.pop("llama_cpp", None)  # the fake goes; the real module comes back
        if real is not None:
            sys.modules["llama_cpp"] = real
    assert got == [object, object]
