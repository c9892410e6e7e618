"""Reading a checkpoint's config.json with errors that name the file and the key.

The numbers in it are checked before any of them is used: a count or size must be a whole number
in a sane range, an epsilon or a rope base a finite positive number, and the block count must
agree with the layers the checkpoint's tensor names hold (:func:`check_block_count`), so nothing
is allocated per layer for layers that are not there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ggufkit.core.errors import ConfigError, ConversionError
from ggufkit.core.fsutil import read_json

MAX_COUNT = 2**31 - 1  # GGUF's hparams are 32-bit; llama.cpp reads most as int32

# Whole numbers that size or count something: at least 1, at most MAX_COUNT.
COUNT_KEYS = frozenset(
    {
        "hidden_size", "n_embed", "n_embd", "d_model", "intermediate_size", "ffn_hidden_size",
        "num_attention_heads", "n_head", "num_key_value_heads", "multi_query_group_num",
        "num_hidden_layers", "n_layer", "n_layers", "num_layers", "vocab_size", "padded_vocab_size",
        "head_dim", "max_position_embeddings", "max_sequence_length", "n_positions", "seq_length",
        "n_ctx", "original_max_position_embeddings",
    }
)  # fmt: skip
# Finite numbers above zero (epsilons below one).
POSITIVE_KEYS = frozenset({"rope_theta", "factor", "low_freq_factor", "high_freq_factor"})
EPSILON_KEYS = frozenset({"rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps"})
NESTED = ("rope_scaling", "rope_parameters")
BLOCK_KEYS = ("num_hidden_layers", "n_layer", "n_layers")


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
    check_numbers(data, path)
    return data


def check_numbers(config: dict[str, Any], path: Path) -> None:
    """Refuse a count that is not a whole number in 1..MAX_COUNT, or an epsilon, rope base or
    scaling factor that is not a finite positive number (lists and objects are left to the
    converter that reads them)."""
    sections: list[tuple[str, dict[str, Any]]] = [("", config)]
    sections += [(f"{key}.", config[key]) for key in NESTED if isinstance(config.get(key), dict)]
    for prefix, section in sections:
        for key, value in section.items():
            if value is None or isinstance(value, (list, dict)):
                continue
            if key in COUNT_KEYS and not prefix:
                _check_count(prefix + key, value, path)
            elif key in EPSILON_KEYS or key in POSITIVE_KEYS:
                _check_positive(prefix + key, value, path, below_one=key in EPSILON_KEYS)


def _bad_number(path: Path, key: str, value: Any, wanted: str) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    return ConfigError(
        f"{path}: {key} should be {wanted}, found {shown}",
        hint="the config is corrupt or not from this model: restore it from the original checkpoint",
        path=path,
    )


def _check_count(key: str, value: Any, path: Path) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
        raise _bad_number(path, key, value, f"a whole number from 1 to {MAX_COUNT}")


def _check_positive(key: str, value: Any, path: Path, *, below_one: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
        and (value < 1 or not below_one)
    )
    if not ok:
        wanted = "a number between 0 and 1" if below_one else "a finite number above 0"
        raise _bad_number(path, key, value, wanted)


def require(config: dict[str, Any], *keys: str, path: str | Path, kind: type = int) -> Any:
    """The first of ``keys`` present in ``config`` (HF configs name one value several ways)."""
    for key in keys:
        if key in config and config[key] is not None:
            value = config[key]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{path}: {key} should be an integer, found {value!r}", path=path)
            if kind is int and not 0 <= value <= MAX_COUNT:
                raise _bad_number(Path(path), key, value, f"a whole number up to {MAX_COUNT}")
            return value
    raise ConfigError(
        f"{path} lacks {' / '.join(keys)}",
        hint="the config is incomplete: restore it from the original checkpoint",
        path=path,
    )


LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")  # the first all-digit part of a tensor name


def layer_index(tensor_name: str) -> int | None:
    """The block a tensor belongs to: the first all-digit part of its name (``model.layers.7.``,
    ``transformer.h.7.``), or None for tensors outside the blocks."""
    match = LAYER_INDEX.search(tensor_name)
    return int(match.group(1)) if match and len(match.group(1)) < 10 else None


def check_block_count(
    block_count: int, tensor_names: Iterable[str], *, config_path: Path, model_dir: Path
) -> None:
    """The config's block count must not exceed the layers the tensor names hold: checked before
    anything is built per layer, so a config claiming a billion layers costs nothing."""
    present = {index for name in tensor_names if (index := layer_index(name)) is not None}
    if block_count <= len(present):
        return
    missing = next(i for i in range(len(present) + 1) if i not in present)
    raise ConversionError(
        f"{config_path} says the model has {block_count} layers, but {model_dir} lacks tensors "
        f"of blk.{missing}. (its tensor names hold {len(present)} layers)",
        hint="the checkpoint is incomplete (download every weight shard), or config.json is "
        "not this checkpoint's",
        path=model_dir,
    )


def check_layers_for_upstream(
    model_dir: Path, tensor_names: list[str], count_keys: tuple[str, ...] = ()
) -> None:
    """Before the upstream converter builds its per-layer maps: the same rule as the native
    engine's (:func:`check_block_count`), for the block count under ``count_keys`` (a family's
    own, where its usual key counts something else) or any of the usual keys."""
    config, path = load_config(model_dir), Path(model_dir) / "config.json"
    keys = count_keys or (*BLOCK_KEYS, "num_layers")
    count = next((config[k] for k in keys if type(config.get(k)) is int), 0)
    check_block_count(count, tensor_names, config_path=path, model_dir=Path(model_dir))


def architecture(config: dict[str, Any], path: str | Path) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    raise ConfigError(
        f"{path} has no `architectures` entry, so the model type is unknown",
        hint='add e.g. "architectures": ["LlamaForCausalLM"] to config.json',
        path=path,
    )
