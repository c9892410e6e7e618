"""`ggufkit build`: the pinned llama.cpp built once with CMake, cached by (source, flags, platform)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform as platform_module
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ggufkit.core import paths
from ggufkit.core.errors import BuildError, ToolMissingError
from ggufkit.core.fsutil import locked, write_json_atomic
from ggufkit.core.log import get_logger, progress
from ggufkit.llamacpp import layout, patches
from ggufkit.llamacpp.cpu import CpuInfo, detect_cpu
from ggufkit.llamacpp.runner import new_log_path, run_tool
from ggufkit.llamacpp.source import SourcePin, default_source_dir, ensure_source, read_pin
from ggufkit.llamacpp.toolchain import find_cmake, find_compiler, pick_generator

log = get_logger("llamacpp.build")

STAMP_NAME = "ggufkit-build.json"
CURRENT_POINTER = "current.json"


@dataclass
class BuildInfo:
    key: str
    build_dir: Path
    tools: dict[str, Path]
    library: Path
    llama_cpp_commit: str
    sdist_sha256: str
    options: dict[str, object]
    platform: str
    seconds: float
    cached: bool = True  # False only for the run that compiled it
    cpu: str = ""  # the CPU it was compiled on, in words
    patches: str = "none"  # digest of vendor/patches applied to the source
    selftest: dict[str, object] | None = None  # the self-test's record; None until it has run

    @property
    def lib_dir(self) -> Path:
        return self.library.parent

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["build_dir"] = str(self.build_dir)
        data["library"] = str(self.library)
        data["lib_dir"] = str(self.lib_dir)
        data["tools"] = {name: str(path) for name, path in self.tools.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> BuildInfo:
        tools = data["tools"]
        assert isinstance(tools, dict)
        options = data["options"]
        assert isinstance(options, dict)
        return cls(
            key=str(data["key"]),
            build_dir=Path(str(data["build_dir"])),
            tools={str(k): Path(str(v)) for k, v in tools.items()},
            library=Path(str(data["library"])),
            llama_cpp_commit=str(data["llama_cpp_commit"]),
            sdist_sha256=str(data["sdist_sha256"]),
            options=options,
            platform=str(data["platform"]),
            seconds=float(str(data["seconds"])),
            cpu=str(data.get("cpu", "")),
            patches=str(data.get("patches", "none")),
            selftest=selftest if isinstance(selftest := data.get("selftest"), dict) else None,
        )

    @property
    def selftest_failed(self) -> bool:
        return self.selftest is not None and not self.selftest.get("ok", False)


def platform_tag() -> str:
    return f"{sys.platform}-{platform_module.machine().lower()}"


def build_key(
    pin: SourcePin,
    options: layout.BuildOptions,
    platform: str | None = None,
    *,
    cpu: CpuInfo | None = None,
    patches_digest: str | None = None,
) -> str:
    """The cache key: source, patches, options, platform, and for a native build the CPU's ISA
    features, so that a shared GGUFKIT_HOME never hands a machine a build for another CPU."""
    cpu = cpu or detect_cpu()
    payload = json.dumps(
        {
            "sha256": pin.sha256,
            "patches": patches_digest or patches.patches_digest(),
            "options": asdict(options),
            "platform": platform or platform_tag(),
            "cpu": cpu.isa_key() if options.native else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_stamp(root: Path, *, complete: bool = False) -> BuildInfo | None:
    stamp = root / STAMP_NAME
    if not stamp.is_file():
        return None
    try:
        info = BuildInfo.from_json(json.loads(stamp.read_text()))
    except (ValueError, KeyError, AssertionError, TypeError):
        log.warning("the build cache at %s is corrupted (unreadable stamp); rebuilding", root)
        return None
    missing = [p for p in [*info.tools.values(), info.library] if not p.is_file()]
    if missing:
        log.warning(
            "the build cache at %s is corrupted (%s missing); rebuilding", root, missing[0].name
        )
        return None
    if complete and (new := sorted(set(layout.TOOLS) - set(info.tools))):
        log.info("the cached build predates %s: building it in the same tree", ", ".join(new))
        return None
    return info


def _collect(tree: Path) -> tuple[dict[str, Path], Path]:
    tools = {}
    for name in layout.TOOLS:
        found = layout.find_binary(tree, name)
        if found is None:
            raise BuildError(
                f"the build finished but {name} is not in {tree}",
                hint="run `ggufkit build --force`",
            )
        tools[name] = found
    library = layout.find_library(tree)
    if library is None:
        raise BuildError(f"the build finished but the llama shared library is not in {tree}")
    return tools, library


def build(
    options: layout.BuildOptions | None = None,
    *,
    jobs: int | None = None,
    force: bool = False,
    bindings: bool = True,
) -> BuildInfo:
    """Build (or reuse) the pinned llama.cpp; returns where the binaries and library are."""
    options = options or layout.BuildOptions()
    pin = read_pin()
    cpu = detect_cpu()
    key = build_key(pin, options, cpu=cpu)
    root = paths.builds_dir() / key
    info = None if force else _read_stamp(root, complete=True)
    if info is None:
        with locked(root.with_name(key + ".lock"), what="the llama.cpp build cache"):
            # another process may have built it
            info = None if force else _read_stamp(root, complete=True)
            if info is None:
                info = _build_into(root, pin, key, options, jobs or os.cpu_count() or 2, cpu)
    write_json_atomic(paths.builds_dir() / CURRENT_POINTER, {"key": key})
    if bindings:
        install_bindings(info, pin)
    return info


def configure_command(options: layout.BuildOptions | None = None) -> list[str]:
    """The CMake configure command ``build`` would run for ``options`` (``build --dry-run``);
    nothing is fetched or built, and a missing cmake shows as plain ``cmake``."""
    options = options or layout.BuildOptions()
    pin, cpu = read_pin(), detect_cpu()
    tree = paths.builds_dir() / build_key(pin, options, cpu=cpu) / "cmake"
    try:
        cmake = find_cmake()
    except ToolMissingError:
        cmake = "cmake"
    args = layout.configure_args(
        default_source_dir(pin), tree, options, cpu=cpu, generator=pick_generator()
    )
    return [cmake, *args]


def _build_into(
    root: Path, pin: SourcePin, key: str, options: layout.BuildOptions, jobs: int, cpu: CpuInfo
) -> BuildInfo:
    cmake = find_cmake()
    find_compiler()
    source = ensure_source(pin)
    tree = root / "cmake"
    cache_file = tree / "CMakeCache.txt"
    if (
        cache_file.is_file()
        # CMake writes the path with forward slashes on every platform.
        and f"CMAKE_HOME_DIRECTORY:INTERNAL={source.as_posix()}"
        not in cache_file.read_text(errors="replace")
    ):
        # Same flags from another checkout: CMake refuses a cache made for a different source dir.
        import shutil  # here: shutil loads bz2 and lzma, which finding a tool does not need

        shutil.rmtree(tree)
    (root / STAMP_NAME).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("configuring llama.cpp %s (build %s)", pin.llama_cpp_commit, key)
    log.info("CPU: %s", cpu.describe())
    configure = layout.configure_args(source, tree, options, cpu=cpu, generator=pick_generator())
    hint = "read the log; `ggufkit doctor` checks the toolchain"
    run_tool(
        [cmake, *configure],
        what="CMake configure",
        hint=hint,
        log_path=new_log_path("cmake-configure"),
    )
    log.info(
        "compiling %s with %d jobs (several minutes on first run)", ", ".join(layout.TOOLS), jobs
    )
    pattern = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\]|^\[\s*(\d+)%\]")
    with progress(100, "building llama.cpp", unit="%") as bar:

        def on_line(line: str) -> None:
            match = pattern.match(line)
            if match and match.group(1):
                bar.update(100 * int(match.group(1)) / int(match.group(2)) - bar.n)
            elif match and match.group(3):
                bar.update(int(match.group(3)) - bar.n)

        run_tool(
            [cmake, *layout.build_args(tree, options, jobs)],
            what="compiling llama.cpp",
            hint=hint,
            on_line=on_line,
            merge_stderr=True,
            log_path=new_log_path("cmake-build"),
            env={"NINJA_STATUS": "[%f/%t] "},
        )
    tools, library = _collect(tree)
    info = BuildInfo(
        key=key,
        build_dir=tree,
        tools=tools,
        library=library,
        llama_cpp_commit=pin.llama_cpp_commit,
        sdist_sha256=pin.sha256,
        options=asdict(options),
        platform=platform_tag(),
        seconds=round(time.perf_counter() - started, 1),
        cached=False,
        cpu=cpu.describe(),
        patches=patches.patches_digest(),
    )
    write_json_atomic(root / STAMP_NAME, info.to_json())
    log.info("built in %.0f s: %s", info.seconds, tree)
    return info


def record_selftest(info: BuildInfo, record: dict[str, object]) -> BuildInfo:
    """Store the self-test's result in the build's stamp, so a cached build is not tested again."""
    info.selftest = record
    if info.key != "external":
        stamp = info.to_json()
        stamp.pop("lib_dir", None)
        stamp["cached"] = True
        write_json_atomic(paths.builds_dir() / info.key / STAMP_NAME, stamp)
    return info


def _usable(info: BuildInfo) -> BuildInfo:
    if info.selftest_failed:
        assert info.selftest is not None
        raise BuildError(
            f"the llama.cpp build at {info.build_dir} failed its self-test: "
            f"{info.selftest.get('error', 'see ggufkit doctor')}",
            hint=str(info.selftest.get("hint") or "run `ggufkit build --portable`"),
        )
    return info


def _made_for_this_machine(info: BuildInfo) -> bool:
    """Whether this machine would compute the same key: a pointer written on another machine
    that shares GGUFKIT_HOME must not lead here to a build for its CPU."""
    options = dict(info.options)
    options["extra_cmake_args"] = tuple(options.get("extra_cmake_args") or ())  # type: ignore[arg-type]
    try:
        expected = build_key(read_pin(), layout.BuildOptions(**options))  # type: ignore[arg-type]
    except TypeError:  # a stamp from another ggufkit version
        return False
    if expected != info.key:
        log.debug("build %s was made for another CPU or source; ignoring it", info.key)
    return expected == info.key


def _candidate_keys(builds: Path) -> Iterator[str]:
    """The last build's key, then the default options' (computed only when asked for: a key
    hashes the patches and reads the CPU)."""
    pointer = builds / CURRENT_POINTER
    if pointer.is_file():
        with contextlib.suppress(ValueError, KeyError):
            yield str(json.loads(pointer.read_text())["key"])
    yield build_key(read_pin(), layout.BuildOptions())


def current_build(*, allow_failed_selftest: bool = False) -> BuildInfo:
    """The last successful build (or the default-options one); ToolMissingError when none,
    BuildError when it failed its self-test (it would crash), unless ``allow_failed_selftest``."""
    override = os.environ.get("GGUFKIT_BUILD_DIR")
    if override:
        tools, library = _collect(Path(override))
        pin = read_pin()
        return BuildInfo(
            "external",
            Path(override),
            tools,
            library,
            pin.llama_cpp_commit,
            pin.sha256,
            {},
            platform_tag(),
            0.0,
            True,
        )
    builds = paths.builds_dir()
    for key in _candidate_keys(builds):
        info = _read_stamp(builds / key)
        if info is not None and _made_for_this_machine(info):
            return info if allow_failed_selftest else _usable(info)
    raise ToolMissingError(
        "llama.cpp is not built yet", hint="run `ggufkit build` (a few minutes, once)"
    )


def find_tool(name: str) -> Path:
    """The path of a built llama.cpp tool such as ``llama-quantize``."""
    info = current_build()
    path = info.tools.get(name) or layout.find_binary(info.build_dir, name)
    if path is None or not path.is_file():
        raise ToolMissingError(
            f"{name} is not in the llama.cpp build at {info.build_dir}",
            hint="run `ggufkit build --force`",
        )
    return path


def bindings_version() -> str | None:
    import importlib.metadata  # here: ~15 ms that `find_tool` (every quantize) does not need

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def install_bindings(info: BuildInfo, pin: SourcePin | None = None) -> None:
    """pip-install llama-cpp-python from the verified sdist without compiling llama.cpp again."""
    pin = pin or read_pin()
    if bindings_version() == pin.version:
        return
    from ggufkit.llamacpp.source import fetch_sdist

    sdist = fetch_sdist(pin)
    log.info(
        "installing %s %s against build %s (no second compile)", pin.package, pin.version, info.key
    )
    env = {"CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        str(sdist),
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, **env},
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(
            f"installing {pin.package} {pin.version} failed",
            hint="retry with `ggufkit build -v`; or install it yourself with "
            f'CMAKE_ARGS="{env["CMAKE_ARGS"]}" pip install {pin.package}=={pin.version}',
            tail="\n".join((result.stderr or result.stdout).strip().splitlines()[-10:]),
        )
    log.info("llama-cpp-python installed in %.0f s", time.perf_counter() - started)
