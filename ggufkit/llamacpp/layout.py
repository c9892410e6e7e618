"""Where each platform's CMake build puts binaries and shared libraries, and the CMake arguments.

Pure functions of (platform, build tree) so that Linux, macOS and Windows layouts are unit-tested
with fake trees on any machine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ggufkit.llamacpp.cpu import CpuInfo

# The binaries ggufkit drives, and the library llama-cpp-python loads.
# llama-mtmd-cli (tools/mtmd, with libmtmd): `run --image`; about a sixth more of a cold build.
TOOLS = (
    "llama-quantize",
    "llama-perplexity",
    "llama-imatrix",
    "llama-bench",
    "llama-gguf-split",
    "llama-mtmd-cli",
)
LIBRARY_TARGET = "llama"

# Multi-config generators (Visual Studio, Xcode) add a configuration directory.
CONFIG_DIRS = ("", "Release", "RelWithDebInfo", "MinSizeRel", "Debug")
SEARCH_DIRS = ("bin", "", "lib", "src", "ggml/src", "tools")


def exe_name(name: str, platform: str = sys.platform) -> str:
    return f"{name}.exe" if platform.startswith("win") else name


def library_names(name: str, platform: str = sys.platform) -> tuple[str, ...]:
    if platform.startswith("win"):
        return (f"{name}.dll", f"lib{name}.dll")
    if platform == "darwin":
        return (f"lib{name}.dylib",)
    return (f"lib{name}.so",)


def _candidates(build_dir: Path, filenames: Sequence[str]) -> list[Path]:
    found = []
    for sub in SEARCH_DIRS:
        for config in CONFIG_DIRS:
            for filename in filenames:
                found.append(build_dir / sub / config / filename)
    return found


def find_binary(build_dir: Path, name: str, platform: str = sys.platform) -> Path | None:
    """The built tool ``name`` in any CMake layout, or None."""
    for candidate in _candidates(build_dir, [exe_name(name, platform)]):
        if candidate.is_file():
            return candidate
    return None


def find_library(
    build_dir: Path, name: str = LIBRARY_TARGET, platform: str = sys.platform
) -> Path | None:
    """The shared library ``name`` (libllama.so, libllama.dylib, llama.dll), or None."""
    for candidate in _candidates(build_dir, library_names(name, platform)):
        if candidate.is_file():
            return candidate
    return None


# Without these, a native build on an AMX CPU compiles ggml-cpu's AMX kernels, which crash at
# this pin (SIGILL at tilezero: tile-data permission is requested for the main thread only).
# GCC and Clang let an explicit -mno-* win over -march=native whatever the order.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


@dataclass(frozen=True)
class BuildOptions:
    """What changes the binaries: part of the cache key.

    ``native`` builds for this CPU (``-march=native``); otherwise the build is portable the way
    llama.cpp's releases are: every CPU variant as a loadable backend, chosen at run time.
    ``amx`` keeps the AMX kernels (off by default: they crash at this pin).
    """

    cuda: bool = False
    metal: bool | None = None  # None: CMake's default (on for Apple silicon)
    native: bool = True
    extra_cmake_args: tuple[str, ...] = field(default_factory=tuple)
    build_type: str = "Release"
    amx: bool = False

    def backend_args(self) -> list[str]:
        args = []
        if self.cuda:
            args.append("-DGGML_CUDA=ON")
        if self.metal is not None:
            args.append(f"-DGGML_METAL={'ON' if self.metal else 'OFF'}")
        return args


def cpu_args(
    options: BuildOptions, build_dir: Path, cpu: CpuInfo, platform: str = sys.platform
) -> list[str]:
    """How the CPU backend is compiled: for this CPU (minus AMX), or every variant (portable)."""
    if not options.native:
        return [
            "-DGGML_NATIVE=OFF",
            "-DGGML_BACKEND_DL=ON",
            "-DGGML_CPU_ALL_VARIANTS=ON",
            # Backends are otherwise searched beside the executable (python's bin/ for the
            # bindings) and in the current directory only.
            "-DGGML_BACKEND_DIR=" + (build_dir / "bin").as_posix(),
            f"-DGGML_CPU_VARIANT_AMX={'ON' if options.amx else 'OFF'}",
        ]
    if cpu.is_x86 and cpu.has_amx and not options.amx and not platform.startswith("win"):
        # MSVC compiles no AMX code unless asked to (GGML_AMX_*), so Windows needs nothing.
        return [f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}"]
    return []


def configure_args(
    source_dir: Path,
    build_dir: Path,
    options: BuildOptions,
    *,
    cpu: CpuInfo,
    platform: str = sys.platform,
    generator: str | None = None,
) -> list[str]:
    """The `cmake` configure argument list (without the cmake executable itself)."""
    args = ["-S", str(source_dir), "-B", str(build_dir)]
    if generator:
        args += ["-G", generator]
    args += [
        f"-DCMAKE_BUILD_TYPE={options.build_type}",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_COMMON=ON",
    ]
    if platform == "darwin":
        # Binaries find the dylibs beside them without DYLD_LIBRARY_PATH.
        args.append("-DCMAKE_BUILD_RPATH=@loader_path")
    elif platform.startswith("win"):
        # Put every .exe and .dll in one folder so the tools find the DLLs.
        args.append("-DCMAKE_RUNTIME_OUTPUT_DIRECTORY=" + str(build_dir / "bin"))
    else:
        args.append("-DCMAKE_BUILD_RPATH=$ORIGIN")
    args += options.backend_args()
    args += cpu_args(options, build_dir, cpu, platform)
    args += list(options.extra_cmake_args)
    return args


def build_args(
    build_dir: Path,
    options: BuildOptions,
    jobs: int,
    targets: Sequence[str] = (*TOOLS, LIBRARY_TARGET),
) -> list[str]:
    """The `cmake --build` argument list; --config matters only for multi-config generators."""
    return [
        "--build",
        str(build_dir),
        "--config",
        options.build_type,
        "-j",
        str(jobs),
        "--target",
        *targets,
    ]
