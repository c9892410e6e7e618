"""A PEFT LoRA adapter read and checked: ``adapter_config.json`` + ``adapter_model.safetensors``.

What PEFT computes for a targeted weight W (out x in): ``W + scale * B @ A`` with A (r x in) and
B (out x r), transposed for ``fan_in_fan_out`` (GPT-2's Conv1D stores W as in x out) and for an
embedding (``lora_embedding_A`` is r x vocab, ``lora_embedding_B`` dim x r). ``scale`` is
``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` and ``alpha_pattern``
give some modules their own r and alpha, matched as PEFT matches them (``get_pattern_key``: the
first pattern that matches the end of the module's name). Whole tensors the adapter saves
(``modules_to_save``, embedding layers saved with a resized vocabulary) replace the base's.
Everything here is read before anything is computed: a bad adapter fails before any output exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import AdapterError
from ggufkit.core.fsutil import read_json
from ggufkit.formats.safetensors import Checkpoint, TensorInfo

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
_HINT = "give the directory PEFT's save_pretrained wrote (adapter_config.json and its weights)"
# Settings ggufkit cannot apply: a value other than these defaults is refused by name.
_UNSUPPORTED = {
    "use_dora": (False, "DoRA (use_dora) rescales each weight's columns after the update"),
    "lora_bias": (False, "a LoRA bias (lora_bias)"),
    "layer_replication": (None, "layer_replication"),
    "use_qalora": (False, "QA-LoRA (use_qalora)"),
    "alora_invocation_tokens": (None, "activated LoRA (alora_invocation_tokens)"),
    "trainable_token_indices": (None, "trainable token indices"),
    "target_parameters": (None, "LoRA on parameters (target_parameters)"),
    "use_bdlora": (None, "block-diagonal LoRA (use_bdlora)"),
}


@dataclass(frozen=True)
class LoraPair:
    """One targeted weight: base tensor ``target`` gets ``scale * B @ A`` (see the module doc)."""

    target: str  # the base checkpoint's tensor name, e.g. model.layers.0.self_attn.q_proj.weight
    module: str  # the module's name, e.g. model.layers.0.self_attn.q_proj
    a: str  # the adapter's tensor names
    b: str
    rank: int
    alpha: float
    scale: float
    transposed: bool  # fan_in_fan_out or an embedding: the delta is (B @ A).T


@dataclass
class Adapter:
    """A LoRA adapter directory, its settings checked and its tensors named by the base's names."""

    path: Path
    config: dict[str, Any]
    weights: Checkpoint
    pairs: dict[str, LoraPair] = field(default_factory=dict)  # by base tensor name
    saved: dict[str, str] = field(default_factory=dict)  # base name -> adapter tensor (whole)

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    @property
    def alpha_pattern(self) -> dict[str, float]:
        return dict(self.config.get("alpha_pattern") or {})

    @property
    def rank_pattern(self) -> dict[str, int]:
        return dict(self.config.get("rank_pattern") or {})

    def info(self, name: str) -> TensorInfo:
        return self.weights.info(name)

    def close(self) -> None:
        self.weights.close()

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_adapter(adapter_dir: str | Path) -> Adapter:
    """Read and check an adapter; AdapterError naming what is wrong, before anything is written."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise AdapterError(f"the adapter {path} is not a directory", hint=_HINT, path=path)
    config = read_json(
        path / CONFIG,
        AdapterError,
        hint=_HINT,
        missing_hint=f"{path} is not a PEFT adapter: {_HINT}",
    )
    if not isinstance(config, dict):
        raise AdapterError(f"{path / CONFIG} does not hold a JSON object", hint=_HINT, path=path)
    _check_settings(path, config)
    files = [path / name for name in WEIGHTS if (path / name).is_file()]
    if not files:
        raise AdapterError(
            f"{path} holds adapter_config.json but no {' or '.join(WEIGHTS)}", hint=_HINT, path=path
        )
    adapter = Adapter(path, config, Checkpoint(files[:1]))
    try:
        _name_tensors(adapter)
    except BaseException:
        adapter.close()
        raise
    return adapter


def _check_settings(path: Path, config: dict[str, Any]) -> None:
    where = path / CONFIG
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterError(
            f"{where}: peft_type is {kind!r}; ggufkit applies LoRA adapters only",
            hint="merge it with PEFT's merge_and_unload() and convert the merged model",
            path=where,
        )
    for key, (default, what) in _UNSUPPORTED.items():
        value = config.get(key, default)
        if value not in (default, False, None, {}, []):
            raise AdapterError(
                f"{where}: {what} is not plain LoRA and ggufkit does not apply it",
                hint="merge it with PEFT's merge_and_unload() and convert the merged model",
                path=where,
            )
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= 1 << 20:
        raise AdapterError(f"{where}: r is {rank!r}, not a positive rank", hint=_HINT, path=where)
    if not _is_number(alpha):
        raise AdapterError(
            f"{where}: lora_alpha is {alpha!r}, not a number", hint=_HINT, path=where
        )
    for key, check in (("rank_pattern", _is_int), ("alpha_pattern", _is_number)):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(
            isinstance(k, str) and check(v) and v > 0 for k, v in pattern.items()
        ):
            raise AdapterError(
                f"{where}: {key} must map module names to positive numbers", hint=_HINT, path=where
            )
    targets = config.get("target_modules")
    if not (
        targets is None
        or isinstance(targets, str)
        or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterError(
            f"{where}: target_modules must be a list of names or a regular expression",
            hint=_HINT,
            path=where,
        )
    if isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as exc:
            raise AdapterError(
                f"{where}: target_modules is not a valid regular expression: {exc}",
                hint=_HINT,
                path=where,
            ) from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the first pattern matching the end of the module's name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def targeted(config: dict[str, Any], module: str) -> bool:
    """Whether ``target_modules`` names ``module`` (as PEFT's check_target_module_exists)."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _name_tensors(adapter: Adapter) -> None:
    """Pair lora_A with lora_B by module and name each with the base tensor it changes."""
    halves: dict[str, dict[str, str]] = {}
    strange = []
    for name in adapter.weights.names():
        inner = name.removeprefix(_PREFIX)
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_[AB])", inner)
        if match:
            module = match.group(1) or match.group(3)
            side = (match.group(2) or match.group(4))[-1]
            embedding = match.group(4) is not None
            halves.setdefault(module, {})[side] = name
            halves[module]["kind"] = "embedding" if embedding else "linear"
        elif re.fullmatch(r".+\.(lora_[A-Za-z_]+|lora_magnitude_vector)(\..+)?", inner):
            strange.append(name)
        elif ".original_module." not in inner:  # (the base's copy, kept by modules_to_save)
            # a whole tensor: modules_to_save, or an embedding saved with the adapter (its
            # base_layer, resized); the trained module wins over a saved base layer
            key = inner.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
            if key not in adapter.saved or ".base_layer." in adapter.saved[key]:
                adapter.saved[key] = name
    if strange:
        raise AdapterError(
            f"{adapter.path}: tensors ggufkit does not know how to apply ("
            + ", ".join(strange[:4])
            + ")",
            hint="merge it with PEFT's merge_and_unload() and convert the merged model",
            path=adapter.path,
        )
    if not halves and not adapter.saved:
        raise AdapterError(f"{adapter.path} holds no LoRA tensors", hint=_HINT, path=adapter.path)
    for module, parts in sorted(halves.items()):
        _add_pair(adapter, module, parts)


def _add_pair(adapter: Adapter, module: str, parts: dict[str, str]) -> None:
    where = adapter.path
    if "A" not in parts or "B" not in parts:
        raise AdapterError(
            f"{where}: {module} has only one of lora_A and lora_B", hint=_HINT, path=where
        )
    if not targeted(adapter.config, module):
        raise AdapterError(
            f"{where}: the adapter holds tensors for {module}, which its target_modules "
            f"({adapter.config.get('target_modules')!r}) does not name",
            hint="the adapter files do not belong together; save the adapter again with PEFT",
            path=where,
        )
    a, b = adapter.info(parts["A"]), adapter.info(parts["B"])
    embedding = parts["kind"] == "embedding"
    rank = _pattern_value(adapter.rank_pattern, module, adapter.rank)
    alpha = float(_pattern_value(adapter.alpha_pattern, module, adapter.alpha))
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != rank or b.shape[1] != rank:
        raise AdapterError(
            f"{where}: {module}'s lora_A {list(a.shape)} and lora_B {list(b.shape)} do not "
            f"have the rank r={rank} the config gives it",
            hint=_HINT,
            path=where,
        )
    scale = alpha / math.sqrt(rank) if adapter.rslora else alpha / rank
    transposed = embedding or bool(adapter.config.get("fan_in_fan_out"))
    target = module + ".weight"
    adapter.pairs[target] = LoraPair(
        target, module, parts["A"], parts["B"], rank, alpha, scale, transposed
    )


def delta_shape(adapter: Adapter, pair: LoraPair) -> tuple[int, int]:
    """The shape of ``scale * B @ A`` as the base stores the weight."""
    a, b = adapter.info(pair.a).shape, adapter.info(pair.b).shape
    return (a[1], b[0]) if pair.transposed else (b[0], a[1])
