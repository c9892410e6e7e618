"""`ggufkit doctor`: what is present, what is missing, and the command that fixes each."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psutil

from ggufkit.core import paths
from ggufkit.core.errors import GGUFKitError
from ggufkit.core.fsutil import free_bytes, human_bytes
from ggufkit.llamacpp import build as llama_build
from ggufkit.llamacpp.cpu import detect_cpu
from ggufkit.llamacpp.source import default_source_dir, read_pin, source_is_current

MIN_FREE_DISK = 10 * 1024**3


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    data: dict[str, object] | None = None  # structured details for --json

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check(
        "python",
        ok,
        f"{platform.python_version()} at {sys.executable}",
        "" if ok else "use Python 3.11 or newer",
    )


def check_compiler() -> Check:
    try:
        return Check("compiler", True, llama_build.find_compiler())
    except GGUFKitError as exc:
        return Check("compiler", False, exc.message, exc.hint or "")


def check_cmake() -> Check:
    try:
        return Check("cmake", True, llama_build.find_cmake())
    except GGUFKitError as exc:
        return Check("cmake", False, exc.message, exc.hint or "")


def check_ninja() -> Check:
    found = shutil.which("ninja")
    return Check(
        "ninja",
        bool(found),
        found or "not found (CMake's default generator is used instead)",
        "" if found else "pip install ninja (optional, faster builds)",
        required=False,
    )


def check_source() -> Check:
    pin = read_pin()
    source = default_source_dir(pin)
    ok = source_is_current(source, pin)
    detail = f"llama.cpp {pin.llama_cpp_commit} from {pin.package} {pin.version}"
    return Check(
        "llama.cpp source",
        ok,
        f"{detail} at {source}" if ok else f"{detail}: not unpacked",
        "" if ok else "ggufkit build",
    )


def check_build() -> Check:
    try:
        info = llama_build.current_build()
    except GGUFKitError as exc:
        return Check("llama.cpp build", False, exc.message, exc.hint or "ggufkit build")
    return Check("llama.cpp build", True, f"{info.build_dir} ({', '.join(info.tools)})")


def check_cpu() -> Check:
    cpu = detect_cpu()
    note = "; AMX kernels left out of native builds (ggufkit build --amx)" if cpu.has_amx else ""
    return Check("cpu", True, cpu.describe() + note, required=False)


def check_selftest() -> Check:
    """The build's self-test: from its stamp, or run now (seconds) when it has not run yet."""
    from ggufkit.selftest import ensure_selftest

    try:
        info = llama_build.current_build(allow_failed_selftest=True)
    except GGUFKitError as exc:
        return Check("llama.cpp self-test", False, exc.message, exc.hint or "ggufkit build")
    try:
        result = ensure_selftest(info)
    except GGUFKitError as exc:
        fix = exc.hint or "ggufkit build --force"
        return Check("llama.cpp self-test", False, exc.message, fix, data=info.selftest)
    return Check("llama.cpp self-test", True, result.summary(), data=result.to_json())


def check_bindings() -> Check:
    pin = read_pin()
    version = _version(pin.package)
    if version is None:
        return Check(
            "llama-cpp-python",
            False,
            "not installed",
            "ggufkit build (installs it against the build)",
        )
    if version != pin.version:
        return Check(
            "llama-cpp-python",
            False,
            f"{version} installed, the build is {pin.version}",
            "pip uninstall llama-cpp-python && ggufkit build",
        )
    return Check("llama-cpp-python", True, f"{version} (loads libllama from the ggufkit build)")


def check_package(name: str, pin: str | None = None, extra: str = "torch") -> Check:
    version = _version(name)
    if version is None:
        return Check(
            name, False, "not installed", f"pip install 'ggufkit[{extra}]'", required=False
        )
    ok = pin is None or version.split("+")[0] == pin
    return Check(name, ok, version, "" if ok else f"pip install {name}=={pin}", required=False)


def check_disk() -> Check:
    free = free_bytes(paths.home())
    ok = free >= MIN_FREE_DISK
    return Check(
        "free disk",
        ok,
        f"{human_bytes(free)} free at {paths.home()}",
        "" if ok else "free some disk (models need several GB)",
        required=False,
    )


def check_memory() -> Check:
    memory = psutil.virtual_memory()
    return Check(
        "memory",
        True,
        f"{human_bytes(memory.total)} total, {human_bytes(memory.available)} available",
        required=False,
    )


def check_gpu() -> Check:
    if _version("torch"):
        try:
            import torch

            if torch.cuda.is_available():
                return Check("gpu", True, torch.cuda.get_device_name(0), required=False)
        except Exception:  # a broken CUDA install must not break doctor
            pass
    found = shutil.which("nvidia-smi")
    detail = "nvidia-smi found but torch sees no CUDA device" if found else "none (CPU only)"
    return Check(
        "gpu",
        False,
        detail,
        "build with `ggufkit build --cuda` on a CUDA machine" if found else "",
        required=False,
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    check_python,
    check_compiler,
    check_cmake,
    check_ninja,
    check_cpu,
    check_source,
    check_build,
    check_bindings,
    check_selftest,
    lambda: check_package("torch", "2.13.0"),
    lambda: check_package("transformers"),
    lambda: check_package("bitsandbytes", extra="bnb"),
    check_disk,
    check_memory,
    check_gpu,
)


def diagnose() -> list[Check]:
    return [check() for check in CHECKS]
