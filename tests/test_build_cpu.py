"""The build on any CPU: faked CPUs, the AMX default, patches, crashes named, isolation, self-test.

Every CPU-dependent decision is proven here with a fake CPU, so that it is tested on the machine
that runs the suite whatever its own CPU is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import BuildError, GGUFKitError, InputError, ToolCrashedError, format_error
from ggufkit.llamacpp import build as build_module
from ggufkit.llamacpp import cpu, crash, layout, patches
from ggufkit.llamacpp.isolate import run_isolated
from ggufkit.llamacpp.runner import run_tool
from ggufkit.llamacpp.source import fetch_sdist, read_pin

SAPPHIRE_RAPIDS = cpu.CpuInfo(
    "x86_64",
    frozenset(
        [
            "sse3",
            "ssse3",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512_vnni",
            "avx512_bf16",
            "avx_vnni",
            "amx_tile",
            "amx_int8",
            "amx_bf16",
        ]
    ),
    "Intel Xeon",
)
EPYC = cpu.CpuInfo(
    "x86_64",
    frozenset(["sse3", "ssse3", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_bf16"]),
    "AMD",
)
GRAVITON = cpu.CpuInfo("arm64", frozenset({"asimd", "asimddp", "i8mm", "sve"}), "Neoverse")
POSIX_ONLY = pytest.mark.posix_only  # skipped by name on Windows (conftest)


# --- the CPU ----------------------------------------------------------------------------------


def test_proc_cpuinfo_of_an_amx_xeon() -> None:
    text = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse3 avx2 avx512f amx_bf16 amx_tile amx_int8 hypervisor\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    info = cpu.parse_proc_cpuinfo(text, "x86_64")
    assert info.has_amx and info.model.startswith("Intel(R) Xeon")
    assert info.isa_key() == ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512f", "sse3"]


def test_proc_cpuinfo_of_an_arm_machine() -> None:
    info = cpu.parse_proc_cpuinfo("Features\t: fp asimd asimddp sve i8mm cpuid\n", "arm64")
    assert not info.has_amx and not info.is_x86
    assert info.isa_key() == ["asimd", "asimddp", "i8mm", "sve"]


def test_fake_cpu_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.FAKE_ENV, "aarch64:asimd,SVE")
    assert cpu.detect_cpu() == cpu.CpuInfo("arm64", frozenset({"asimd", "sve"}), "fake CPU")
    monkeypatch.setenv(cpu.FAKE_ENV, "x86_64:avx2,amx_tile")
    assert cpu.detect_cpu().has_amx


# --- configure arguments for each kind of CPU --------------------------------------------------


def _configure(
    options: layout.BuildOptions, info: cpu.CpuInfo, platform: str = "linux"
) -> list[str]:
    return layout.configure_args(Path("src"), Path("out"), options, cpu=info, platform=platform)


def test_native_build_on_amx_leaves_the_amx_kernels_out() -> None:
    args = _configure(layout.BuildOptions(), SAPPHIRE_RAPIDS)
    assert f"-DCMAKE_C_FLAGS={layout.NO_AMX_FLAGS}" in args
    assert f"-DCMAKE_CXX_FLAGS={layout.NO_AMX_FLAGS}" in args
    assert "-DGGML_NATIVE=OFF" not in args


@pytest.mark.parametrize("info", [EPYC, GRAVITON], ids=["x86-no-amx", "arm64"])
def test_native_build_without_amx_needs_no_flags(info: cpu.CpuInfo) -> None:
    args = _configure(layout.BuildOptions(), info)
    assert not any("amx" in arg.lower() for arg in args)
    assert not any(arg.startswith("-DCMAKE_C_FLAGS") for arg in args)


def test_amx_opt_in_and_windows_keep_the_compiler_defaults() -> None:
    assert not any("amx" in a for a in _configure(layout.BuildOptions(amx=True), SAPPHIRE_RAPIDS))
    # MSVC compiles no AMX code unless GGML_AMX_* asks for it.
    assert not any("amx" in a for a in _configure(layout.BuildOptions(), SAPPHIRE_RAPIDS, "win32"))


def _x86_compiler() -> list[str]:
    """A GCC or Clang command that targets x86-64: the host's compiler on an x86-64 machine,
    Clang with ``--target`` elsewhere (macOS on arm64, Windows with LLVM)."""
    import shutil
    import subprocess

    names = dict.fromkeys(n for n in (os.environ.get("CC"), "cc", "gcc", "clang") if n)
    for found in filter(None, map(shutil.which, names)):
        for target in ([], ["--target=x86_64-pc-linux-gnu"]):
            command = [found, *target]
            try:
                done = subprocess.run(
                    [*command, "-march=sapphirerapids", "-dM", "-E", "-x", "c", "-"],
                    input="", capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0 and "__AMX_INT8__" in done.stdout:
                return command
    pytest.skip(f"missing extra x86cc: none of {list(names)} targets x86-64 with -march")


@pytest.mark.parametrize("flags_first", [True, False])
def test_the_no_amx_flags_remove_the_amx_kernels_macros(flags_first: bool) -> None:
    """ggml-cpu compiles its AMX kernels under __AMX_INT8__: the real compiler, targeting a
    Sapphire Rapids CPU (it defines __AMX_INT8__ there), must not define it with the flags,
    before or after -march."""
    import subprocess

    compiler = _x86_compiler()
    flags = layout.NO_AMX_FLAGS.split()
    march = ["-march=sapphirerapids"]

    def macros(args: list[str]) -> str:
        return subprocess.run(
            [*compiler, *args, "-dM", "-E", "-x", "c", "-"],
            input="",
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    defined = macros([*flags, *march] if flags_first else [*march, *flags])
    assert "__AMX_INT8__" not in defined and "__AMX_TILE__" not in defined
    assert "__AVX512F__" in defined  # the rest of the CPU's features stay


@pytest.mark.parametrize(("amx", "variant"), [(False, "OFF"), (True, "ON")])
def test_portable_build_is_runtime_dispatch(amx: bool, variant: str) -> None:
    args = layout.configure_args(
        Path("src"), Path("out"), layout.BuildOptions(native=False, amx=amx), cpu=SAPPHIRE_RAPIDS
    )
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"):
        assert flag in args
    assert "-DGGML_BACKEND_DIR=out/bin" in args  # the bindings find the CPU variants there
    assert f"-DGGML_CPU_VARIANT_AMX={variant}" in args
    assert not any(a.startswith("-DCMAKE_C_FLAGS") for a in args)


# --- the build key -----------------------------------------------------------------------------


def _key(options: layout.BuildOptions, info: cpu.CpuInfo, digest: str = "p1") -> str:
    return build_module.build_key(
        read_pin(), options, "linux-x86_64", cpu=info, patches_digest=digest
    )


def test_native_builds_are_keyed_by_the_cpu() -> None:
    native = layout.BuildOptions()
    assert _key(native, SAPPHIRE_RAPIDS) != _key(native, EPYC)
    assert _key(native, EPYC) == _key(native, cpu.CpuInfo("x86_64", EPYC.features, "other name"))
    # Flags that -march=native does not use do not split the cache.
    noisy = cpu.CpuInfo("x86_64", EPYC.features | {"hypervisor", "rdrand"})
    assert _key(native, EPYC) == _key(native, noisy)


def test_portable_builds_are_shared_and_patches_and_amx_count() -> None:
    portable = layout.BuildOptions(native=False)
    assert _key(portable, SAPPHIRE_RAPIDS) == _key(portable, EPYC)
    assert _key(portable, EPYC) != _key(portable, EPYC, digest="p2")
    assert _key(layout.BuildOptions(), EPYC) != _key(layout.BuildOptions(amx=True), EPYC)


def _fake_build(home: Path, selftest: dict[str, object] | None = None) -> build_module.BuildInfo:
    """A complete-looking cached build for this (possibly faked) CPU, made without compiling."""
    key = build_module.build_key(read_pin(), layout.BuildOptions())
    tree = home / "builds" / key / "cmake"
    tools = {}
    for name in layout.TOOLS:
        tools[name] = tree / "bin" / name
        tools[name].parent.mkdir(parents=True, exist_ok=True)
        tools[name].write_bytes(b"")
    library = tree / "bin" / "libllama.so"
    library.write_bytes(b"")
    info = build_module.BuildInfo(
        key, tree, tools, library, "0c1e57098", read_pin().sha256,
        json.loads(json.dumps(layout.BuildOptions().__dict__)), "test", 1.0,
        selftest=selftest,
    )  # fmt: skip
    (tree.parent / build_module.STAMP_NAME).write_text(json.dumps(info.to_json()))
    (home / "builds" / build_module.CURRENT_POINTER).write_text(json.dumps({"key": key}))
    return info


def test_a_shared_home_never_hands_over_another_cpus_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    monkeypatch.setenv(cpu.FAKE_ENV, "x86_64:avx2,avx512f,amx_tile,amx_int8")
    made = _fake_build(tmp_path)
    assert build_module.current_build().key == made.key
    # Another machine with the same GGUFKIT_HOME (NFS, an image): the pointer leads nowhere.
    monkeypatch.setenv(cpu.FAKE_ENV, "x86_64:avx2")
    with pytest.raises(GGUFKitError, match="not built"):
        build_module.current_build()


def test_the_checkout_is_found_with_its_patches() -> None:
    from ggufkit.core import paths

    root = paths.project_root()
    assert root is not None and (root / "pyproject.toml").is_file()
    assert patches.patches_dir() == root / "vendor" / "patches"


# --- patches -----------------------------------------------------------------------------------

PATCH = """A description line, ignored.

--- a/src/file.c
+++ b/src/file.c
@@ -2,3 +2,4 @@
 two
-three
+THREE
+three and a half
 four
"""


def _tree(tmp_path: Path, text: str, newline: str = "\n") -> Path:
    (tmp_path / "src").mkdir(parents=True, exist_ok=True)
    (tmp_path / "src" / "file.c").write_bytes(text.replace("\n", newline).encode())
    (tmp_path / "fix.patch").write_text(PATCH)
    return tmp_path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_patch_applies_exactly_and_keeps_line_endings(tmp_path: Path, newline: str) -> None:
    root = _tree(tmp_path, "one\ntwo\nthree\nfour\nfive\n", newline)
    assert patches.apply_patch(root, root / "fix.patch") == ["src/file.c"]
    expected = "one\ntwo\nTHREE\nthree and a half\nfour\nfive\n".replace("\n", newline)
    assert (root / "src" / "file.c").read_bytes() == expected.encode()


def test_a_patch_finds_its_hunk_after_a_shift(tmp_path: Path) -> None:
    root = _tree(tmp_path, "zero\nextra\none\ntwo\nthree\nfour\n")
    patches.apply_patch(root, root / "fix.patch")
    assert "THREE" in (root / "src" / "file.c").read_text()


def test_a_patch_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path, "one\ntwo\n3\nfour\n")
    with pytest.raises(InputError, match="does not apply"):
        patches.apply_patch(root, root / "fix.patch")
    assert (root / "src" / "file.c").read_text() == "one\ntwo\n3\nfour\n"


@pytest.mark.needs_llamacpp
def test_the_committed_patches_apply_to_the_pinned_source(tmp_path: Path) -> None:
    files = patches.patch_files()
    assert [f.name[:4] for f in files] == ["0001", "0002", "0003", "0004"]
    targets = {fp.path for f in files for fp in patches.parse_patch(f.read_text(), f.name)}
    pin = read_pin()
    with tarfile.open(fetch_sdist(pin), "r:gz") as archive:
        for member in archive:
            inner = member.name.split("/", 1)[-1]
            relative = inner[len(pin.subdir) + 1 :]
            if inner.startswith(pin.subdir + "/") and relative in targets:
                extracted = archive.extractfile(member)
                assert extracted is not None
                (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / relative).write_bytes(extracted.read())
    assert patches.apply_all(tmp_path, files) == [f.name for f in files]
    assert "common_log_pause" in (tmp_path / "tools/perplexity/main.cpp").read_text()
    assert "GGML_CPU_VARIANT_AMX" in (tmp_path / "ggml/src/CMakeLists.txt").read_text()


# --- crashes are named -------------------------------------------------------------------------


def _suicide(signal_name: str) -> list[str]:
    """A stand-in tool that kills itself with the signal."""
    code = f"import os, signal; os.kill(os.getpid(), signal.{signal_name})"
    return [sys.executable, "-c", code]


@POSIX_ONLY
@pytest.mark.parametrize(
    ("name", "words"), [("SIGILL", "illegal instruction"), ("SIGSEGV", "segmentation fault")]
)
def test_a_tool_killed_by_a_signal_is_named(name: str, words: str) -> None:
    with pytest.raises(ToolCrashedError) as caught:
        run_tool(_suicide(name), what="llama-perplexity on m-Q8_0.gguf", hint="the caller's hint")
    error = caught.value
    assert error.signal_name == name
    text = format_error(error)
    assert f"llama-perplexity on m-Q8_0.gguf crashed: {name} ({words}" in text
    assert "exit code" not in text
    if name == "SIGILL":
        assert "--portable" in (error.hint or "") and "cannot run" in text
    else:
        assert error.hint == "the caller's hint"


def test_windows_exception_codes_are_named_too() -> None:
    assert crash.signal_of(0xC000001D) == "SIGILL"
    assert crash.signal_of(0xC0000005) == "SIGSEGV"
    assert crash.signal_of(-int(signal.SIGSEGV)) == "SIGSEGV"
    assert crash.signal_of(1) is None and crash.signal_of(0) is None


# --- isolation of in-process llama.cpp work (functions for the child, importable by name) ------


def child_returns(value: int) -> int:
    return value * 2


def child_streams(count: int, on_event: object) -> str:
    for i in range(count):
        on_event(f"piece {i}")  # type: ignore[operator]
    return "done"


def child_raises() -> None:
    raise BuildError("a typed failure", hint="do this next")


def child_crashes() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_isolated_call_returns_and_streams() -> None:
    assert run_isolated(child_returns, 21, what="child") == 42
    seen: list[str] = []
    result = run_isolated(
        child_streams, 3, what="child", on_event=seen.append, event_kwarg="on_event"
    )
    assert (result, seen) == ("done", ["piece 0", "piece 1", "piece 2"])


def test_isolated_call_reraises_typed_errors_with_their_hint() -> None:
    with pytest.raises(BuildError, match="a typed failure") as caught:
        run_isolated(child_raises, what="child")
    assert caught.value.hint == "do this next"


@POSIX_ONLY
def test_a_crash_in_the_child_is_an_error_here_and_the_run_goes_on() -> None:
    with pytest.raises(ToolCrashedError, match=r"llama.cpp evaluating m.gguf crashed: SIGSEGV"):
        run_isolated(child_crashes, what="llama.cpp evaluating m.gguf")
    assert run_isolated(child_returns, 1, what="child") == 2  # this process is unharmed


# --- the self-test ----------------------------------------------------------------------------


@POSIX_ONLY
@pytest.mark.needs_llamacpp
def test_selftest_catches_a_crashing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real convert and llama-quantize, then a llama-perplexity that dies of SIGILL."""
    from ggufkit import selftest
    from ggufkit.evaluate import ppl

    standin = tmp_path / "llama-perplexity"
    standin.write_text(
        f"#!{sys.executable}\nimport os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
    )
    standin.chmod(0o755)
    real_find_tool = ppl.find_tool
    monkeypatch.setattr(
        ppl,
        "find_tool",
        lambda name: standin if name == "llama-perplexity" else real_find_tool(name),
    )
    result = selftest.run_selftest(build_module.current_build(), threads=2)
    assert not result.ok
    assert result.step == "llama-perplexity on Q8_0" and result.signal == "SIGILL"
    assert "illegal instruction" in (result.error or "")
    assert "--portable" in (result.hint or "")


def test_a_failed_selftest_fails_build_and_every_later_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit import selftest

    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    info = _fake_build(tmp_path)
    failure = selftest.SelfTestResult(
        ok=False,
        threads=2,
        step="llama-perplexity on Q4_0",
        signal="SIGILL",
        error="llama-perplexity on tiny-llama-Q4_0.gguf crashed: SIGILL (illegal instruction — "
        "this build uses CPU instructions this machine cannot run)",
        hint="rebuild without --amx: `ggufkit build --force`",
    )
    monkeypatch.setattr(build_module, "build", lambda *a, **k: info)
    monkeypatch.setattr(selftest, "run_selftest", lambda *a, **k: failure)
    result = CliRunner().invoke(cli, ["build", "--no-bindings"])
    assert result.exit_code == 1
    assert "failed its self-test: llama-perplexity on Q4_0" in result.output
    assert "SIGILL (illegal instruction" in result.output and "without --amx" in result.output
    stamp = json.loads((tmp_path / "builds" / info.key / build_module.STAMP_NAME).read_text())
    assert stamp["selftest"]["signal"] == "SIGILL"
    # Later commands refuse the build instead of crashing on it.
    with pytest.raises(BuildError, match="failed its self-test"):
        build_module.current_build()
    doctor = CliRunner().invoke(cli, ["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(doctor.output)}
    assert checks["llama.cpp self-test"]["ok"] is False
    assert checks["llama.cpp self-test"]["data"]["signal"] == "SIGILL"


def test_a_stored_selftest_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit import selftest

    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    stored = {"ok": True, "threads": 2, "seconds": 3.0, "perplexity": {"Q4_0": 80.0}}
    info = _fake_build(tmp_path, selftest=stored)
    monkeypatch.setattr(selftest, "run_selftest", pytest.fail)
    assert selftest.ensure_selftest(info).perplexity == {"Q4_0": 80.0}
