"""What this CPU can run: its architecture and the instruction-set features a native build uses.

A native llama.cpp build (``-march=native``) runs only on CPUs with the same features, so the
build key holds them: a ``GGUFKIT_HOME`` shared by several machines never hands one machine a
build compiled for another. ``GGUFKIT_FAKE_CPU`` (``ARCH:feature,feature``, e.g.
``x86_64:avx2,amx_tile``) stands in for the real CPU in tests and on machines whose features
cannot be read.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FAKE_ENV = "GGUFKIT_FAKE_CPU"

# Features that change what -march=native emits (names as Linux's /proc/cpuinfo spells them).
X86_FEATURES = frozenset(
    {
        "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2",
        "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vbmi",
        "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
        "amx_bf16", "amx_fp16",
    }
)  # fmt: skip
ARM_FEATURES = frozenset(
    {"asimd", "fphp", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme", "dotprod"}
)
AMX_FEATURES = frozenset({"amx_tile", "amx_int8", "amx_bf16", "amx_fp16"})

# macOS spells the x86 features in upper case through sysctl, and arm64 ones as hw.optional.*.
_MAC_X86 = {"AVX1.0": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "BMI2": "bmi2",
            "SSE3": "sse3", "SSSE3": "ssse3", "SSE4.1": "sse4_1", "SSE4.2": "sse4_2",
            "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512CD": "avx512cd",
            "AVX512DQ": "avx512dq", "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni",
            "AVX512VBMI": "avx512_vbmi"}  # fmt: skip
_MAC_ARM = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
            "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "asimdhp",
            "hw.optional.arm.FEAT_SME": "sme"}  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "arm64", ...
    features: frozenset[str]
    model: str = ""

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "x86")

    @property
    def has_amx(self) -> bool:
        return bool(self.features & AMX_FEATURES)

    def isa_key(self) -> list[str]:
        """The sorted features that a native build depends on: part of its cache key."""
        relevant = X86_FEATURES if self.is_x86 else ARM_FEATURES
        return sorted(self.features & relevant)

    def describe(self) -> str:
        amx = " with AMX" if self.has_amx else ""
        return f"{self.model or self.arch} ({self.arch}{amx}, {len(self.isa_key())} ISA features)"


def normalise_arch(machine: str) -> str:
    machine = machine.lower()
    return {"amd64": "x86_64", "aarch64": "arm64", "x64": "x86_64"}.get(machine, machine)


def parse_fake(spec: str) -> CpuInfo:
    arch, _, features = spec.partition(":")
    names = {name.strip().lower() for name in features.split(",") if name.strip()}
    return CpuInfo(normalise_arch(arch.strip() or "x86_64"), frozenset(names), "fake CPU")


def parse_proc_cpuinfo(text: str, arch: str) -> CpuInfo:
    """Linux: the ``flags`` (x86) or ``Features`` (arm) line of the first processor."""
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    model = re.search(r"^(?:model name|Model|CPU part)\s*:\s*(.*)$", text, re.M)
    features = frozenset(flags.group(1).split()) if flags else frozenset()
    return CpuInfo(arch, features, model.group(1).strip() if model else "")


def _sysctl(name: str) -> str:
    result = subprocess.run(
        ["sysctl", "-n", name], capture_output=True, text=True, check=False, timeout=10
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _detect_macos(arch: str) -> CpuInfo:
    model = _sysctl("machdep.cpu.brand_string")
    if arch == "arm64":
        found = {feature for key, feature in _MAC_ARM.items() if _sysctl(key) == "1"}
        return CpuInfo(arch, frozenset(found | {"asimd"}), model)
    words = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).split()
    return CpuInfo(arch, frozenset(_MAC_X86[w] for w in words if w in _MAC_X86), model)


def _detect_windows(arch: str) -> CpuInfo:
    # Windows offers no flag list without a helper binary; IsProcessorFeaturePresent covers AVX2
    # and AVX-512 on Windows 10 and later.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    probes = {"avx": 39, "avx2": 40, "avx512f": 41}  # PF_AVX_INSTRUCTIONS_AVAILABLE, ...
    found = {name for name, code in probes.items() if kernel32.IsProcessorFeaturePresent(code)}
    return CpuInfo(arch, frozenset(found), platform.processor())


def detect_cpu() -> CpuInfo:
    """This machine's CPU (or the fake one named by ``GGUFKIT_FAKE_CPU``)."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        return parse_fake(fake)
    arch = normalise_arch(platform.machine())
    try:
        if sys.platform.startswith("linux"):
            return parse_proc_cpuinfo(
                Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"), arch
            )
        if sys.platform == "darwin":
            return _detect_macos(arch)
        if sys.platform.startswith("win"):
            return _detect_windows(arch)
    except (OSError, subprocess.SubprocessError, AttributeError):
        pass
    return CpuInfo(arch, frozenset(), platform.processor())
