"""Where and how ``ggufkit bnb`` loads a model: the device, ``device_map``, remote code, versions."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import ConfigError, UsageError
from ggufkit.core.fsutil import read_json
from ggufkit.core.log import progress_disabled
from ggufkit.formats.hfconfig import load_config
from ggufkit.hub import ResolvedModel, resolve_model

if TYPE_CHECKING:
    from ggufkit.bnb.guards import LinearLayer


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is there, else ``cpu``; ``cuda`` -> ``cuda:<current>``."""
    import torch

    choice = device.strip().lower()
    if choice == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda: torch sees no CUDA GPU",
                hint="use --device cpu (bitsandbytes runs on CPU too), or install a CUDA build of torch",
            )
        index = choice.partition(":")[2]
        return f"cuda:{int(index) if index.isdigit() else torch.cuda.current_device()}"
    raise UsageError(f"unknown device {device!r}", hint="use auto, cpu or cuda")


def device_map(device: str, *, offload: bool) -> str | dict[str, Any]:
    """What ``from_pretrained(device_map=...)`` gets: the whole model on one device, or ``auto``
    placement (GPU first, the rest on CPU) for ``--fp32-cpu-offload``."""
    if device == "cpu":
        return {"": "cpu"}
    if offload:
        return "auto"
    return {"": int(device.partition(":")[2] or 0)}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_remote_code(model_dir: Path, config: dict[str, Any], trust: bool) -> list[str]:
    """Refuse checkpoints that need their own Python code unless ``trust``; notes otherwise."""
    model_map = config.get("auto_map") or {}
    tokenizer_config = model_dir / "tokenizer_config.json"
    tokenizer_map: dict[str, Any] = {}
    if tokenizer_config.is_file():
        try:
            tokenizer_map = read_json(tokenizer_config, ConfigError).get("auto_map", {})
        except (ConfigError, AttributeError):
            tokenizer_map = {}
    if not model_map and not tokenizer_map:
        return []
    if trust:
        return [f"runs the Python code shipped in {model_dir} (--trust-remote-code)"]
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    needs_code = bool(model_map) and model_type not in CONFIG_MAPPING
    needs_code |= bool(tokenizer_map) and not (model_dir / "tokenizer.json").is_file()
    if needs_code:
        raise UsageError(
            f"{model_dir} loads only with its own Python code (auto_map in its config)",
            hint="read that code, then pass --trust-remote-code to run it",
        )
    return [
        f"{model_dir} ships its own code; using transformers' built-in {model_type} classes "
        "instead (--trust-remote-code runs the shipped code)"
    ]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "bitsandbytes", "accelerate"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def quiet_transformers() -> None:
    """transformers' own progress bars follow ggufkit's (-q, GGUFKIT_NO_PROGRESS)."""
    from transformers.utils import logging as hf_logging

    if progress_disabled():
        hf_logging.disable_progress_bar()
    else:
        hf_logging.enable_progress_bar()


def start(
    model: str | Path | ResolvedModel,
    *,
    trust_remote_code: bool,
    threads: int | None,
    device: str,
    notes: list[str],
) -> tuple[ResolvedModel, list[str], str]:
    """What every bitsandbytes run does first: resolve the model, refuse code it would run
    untrusted, import bitsandbytes quietly, set torch's threads (process-wide) and pick the
    device. Returns the model, ``notes`` with the remote-code note added, and the device."""
    from ggufkit.bnb.guards import import_bitsandbytes

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    config = load_config(resolved.path)
    notes = [*notes, *check_remote_code(resolved.path, config, trust_remote_code)]
    import_bitsandbytes()
    quiet_transformers()
    if threads:
        import torch

        torch.set_num_threads(threads)
    return resolved, notes, resolve_device(device)


def skeleton(
    model_dir: Path, auto_class: Any, *, trust_remote_code: bool, skip_modules: Sequence[str]
) -> tuple[list[LinearLayer], list[str]]:
    """The Linear layers of the model ``auto_class`` builds (on the meta device), and the modules
    kept unquantized: transformers' defaults (output embeddings, tied weights), then ``skip_modules``."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ggufkit.bnb.guards import default_skips, linear_layers

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
    skips = [*default_skips(model), *skip_modules]
    return linear_layers(model), list(dict.fromkeys(skips))
