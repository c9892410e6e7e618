"""Which backend llama.cpp computes on: one setting for every tool ggufkit runs and the bindings.

llama.cpp's tools offload every layer to a GPU by default while llama-cpp-python offloads none,
so without one setting perplexity, speed and logit parity would measure different backends.
``GGUFKIT_DEVICE`` (``cpu``, the default, or ``gpu``) is read by every caller and inherited by the
spawned children; ``--device`` on eval/bench/run sets it through :func:`use_device`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Literal

from ggufkit.core.env import scoped_env
from ggufkit.core.errors import UsageError

Device = Literal["cpu", "gpu"]
DEVICES: tuple[Device, ...] = ("cpu", "gpu")
ENV = "GGUFKIT_DEVICE"
# More layers than any model has: llama.cpp offloads min(n, layers + output) on both sides.
ALL_LAYERS = 999


def current_device() -> Device:
    value = os.environ.get(ENV, "cpu").strip().lower() or "cpu"
    if value not in DEVICES:
        raise UsageError(f"{ENV}={value!r} is not a device", hint="use cpu or gpu")
    return "gpu" if value == "gpu" else "cpu"


def gpu_layers(device: Device | None = None) -> int:
    """Layers to offload: 0 on the CPU, all on the GPU (``n_gpu_layers`` for the bindings)."""
    return ALL_LAYERS if (device or current_device()) == "gpu" else 0


def ngl_args(device: Device | None = None) -> list[str]:
    """The same offload as ``-ngl`` for llama-perplexity, llama-bench and llama-imatrix."""
    return ["-ngl", str(gpu_layers(device))]


def use_device(device: Device | None) -> AbstractContextManager[None]:
    """Set the device for everything inside (and for children started meanwhile)."""
    return scoped_env(ENV, device)


GPU_BACKENDS = ("CUDA", "METAL", "VULKAN", "HIP", "SYCL", "OPENCL")


def has_gpu_backend(options: Mapping[str, object], platform: str = "") -> bool:
    """Whether a build made with ``options`` (a BuildInfo's) has a GPU backend; Metal is
    CMake's default on Apple silicon (``darwin-arm64``)."""
    if options.get("cuda") or options.get("metal"):
        return True
    if options.get("metal") is None and platform == "darwin-arm64":
        return True
    extra = options.get("extra_cmake_args")
    wanted = {f"-DGGML_{name}=ON" for name in GPU_BACKENDS}
    return isinstance(extra, list | tuple) and any(str(a).upper() in wanted for a in extra)
