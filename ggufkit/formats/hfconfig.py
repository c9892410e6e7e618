"""Reading a checkpoint's config.json with errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ggufkit.core.errors import ConfigError
from ggufkit.core.fsutil import read_json


def load_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    data = read_json(
        path,
        ConfigError,
        hint="restore the original file",
        missing_hint="pass the directory of a Hugging Face checkpoint (it holds config.json and the weights)",
    )
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object", path=path)
    return data


def require(config: dict[str, Any], *keys: str, path: str | Path, kind: type = int) -> Any:
    """The first of ``keys`` present in ``config`` (HF configs name one value several ways)."""
    for key in keys:
        if key in config and config[key] is not None:
            value = config[key]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{path}: {key} should be an integer, found {value!r}", path=path)
            return value
    raise ConfigError(
        f"{path} lacks {' / '.join(keys)}",
        hint="the config is incomplete: restore it from the original checkpoint",
        path=path,
    )


def architecture(config: dict[str, Any], path: str | Path) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    raise ConfigError(
        f"{path} has no `architectures` entry, so the model type is unknown",
        hint='add e.g. "architectures": ["LlamaForCausalLM"] to config.json',
        path=path,
    )
