"""The build toolchain: cmake, a C++ compiler, the CMake generator.

On Windows the compiler need not be on PATH: `cl` is there only in a Developer prompt, and
CMake's Visual Studio generator finds MSVC by itself through vswhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from ggufkit.core.errors import ToolMissingError
from ggufkit.llamacpp import layout

COMPILERS = ("c++", "g++", "clang++", "cl")


def _which(name: str) -> str | None:
    import shutil  # here: shutil loads bz2 and lzma, and every quantize imports this module

    return shutil.which(name)


def find_cmake() -> str:
    found = _which("cmake")
    if found:
        return found
    try:
        import cmake  # the `cmake` package on PyPI

        candidate = Path(cmake.CMAKE_BIN_DIR) / layout.exe_name("cmake")
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise ToolMissingError(
        "cmake was not found",
        hint="install it: `pip install cmake` (or apt-get install cmake / brew install cmake)",
    )


def vswhere(environ: Mapping[str, str] | None = None) -> Path | None:
    """Visual Studio's locator, installed with every Visual Studio and Build Tools since 2017."""
    environ = os.environ if environ is None else environ
    base = environ.get("ProgramFiles(x86)") or environ.get("ProgramFiles")
    if not base:
        return None
    candidate = Path(base) / "Microsoft Visual Studio" / "Installer" / "vswhere.exe"
    return candidate if candidate.is_file() else None


def find_compiler(platform: str = sys.platform, environ: Mapping[str, str] | None = None) -> str:
    """A C++ compiler on PATH, or on Windows a Visual Studio install that CMake will find."""
    environ = os.environ if environ is None else environ
    for name in (environ.get("CXX", ""), *COMPILERS):
        if name and (found := _which(name)):
            return found
    if platform.startswith("win") and (locator := vswhere(environ)) is not None:
        return f"Visual Studio (found by CMake through {locator})"
    raise ToolMissingError(
        "no C++ compiler was found (looked for $CXX, c++, g++, clang++, cl"
        + (", and Visual Studio through vswhere)" if platform.startswith("win") else ")"),
        hint="install one: apt-get install build-essential, xcode-select --install, "
        "or Visual Studio Build Tools on Windows (C++ workload; no Developer prompt needed)",
    )


def pick_generator() -> str | None:
    """Ninja when present; otherwise CMake's default (Makefiles on POSIX, Visual Studio on
    Windows, which is why no `cl` on PATH is needed there)."""
    return "Ninja" if _which("ninja") else None
