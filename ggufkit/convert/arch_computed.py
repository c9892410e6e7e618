"""The computed kinds of ggufkit's answers (``arch_answers``): a value read from where a
transformers 5 config keeps it, a count, per-layer flags, indices or values, rotary widths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class From:
    """The value at ``path`` (keys, outermost first) of the config, else ``default``."""

    path: tuple[str, ...]
    default: Any
    per_layer: bool = False  # a list with the value for each layer
    times: int = 1  # a multiple of the value

    def read(self, config: dict[str, Any]) -> Any:
        value: Any = config
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                value = self.default
                break
            value = value[key]
        if self.times != 1 and value is not None:
            value = value * self.times
        return [value] * int(config["num_hidden_layers"]) if self.per_layer else value


@dataclass(frozen=True)
class CountOf:
    """How many entries of the per-layer list ``key`` are ``kind``."""

    key: str
    kind: str

    def read(self, config: dict[str, Any]) -> int:
        return sum(entry == self.kind for entry in config.get(self.key) or ())


@dataclass(frozen=True)
class FlagsOf:
    """The per-layer list ``key`` as 1 where the entry is ``kind``, else 0."""

    key: str
    kind: str

    def read(self, config: dict[str, Any]) -> list[int]:
        return [int(entry == self.kind) for entry in config.get(self.key) or ()]


@dataclass(frozen=True)
class IndicesOf:
    """The 1-based positions of the entries of the per-layer list ``key`` that are ``kind``."""

    key: str
    kind: str

    def read(self, config: dict[str, Any]) -> list[int]:
        return [i + 1 for i, entry in enumerate(config.get(self.key) or ()) if entry == self.kind]


@dataclass(frozen=True)
class ValuesOf:
    """The per-layer list ``key`` with each kind replaced by its value: from ``fixed``, else
    from the config's dict ``table``."""

    key: str
    table: str
    fixed: tuple[tuple[str, Any], ...] = ()

    def read(self, config: dict[str, Any]) -> list[Any] | None:
        table, kinds = config.get(self.table), config.get(self.key)
        values = {**(table if isinstance(table, dict) else {}), **dict(self.fixed)}
        if not isinstance(kinds, list) or any(
            not isinstance(k, str) or k not in values for k in kinds
        ):
            return None  # a kind without a value: no answer (the converter says what it lacks)
        return [values[entry] for entry in kinds]


@dataclass(frozen=True)
class RotaryDims:
    """How many dims of a head transformers rotates: int(head size x partial_rotary_factor)."""

    default_fraction: float  # the config class's own, where rope_parameters has none

    def read(self, config: dict[str, Any]) -> int:
        head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        rope = config.get("rope_parameters")
        fraction = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
        return int(head * (self.default_fraction if fraction is None else fraction))


@dataclass(frozen=True)
class OfLayerKind:
    """``field`` of the first layer whose ``layer_types`` entry is ``kind``: its entry in
    ``per_layer_config`` (keyed by the layer's index; transformers saves there only what differs
    from the top level), else the top-level value."""

    kind: str
    field: str

    def read(self, config: dict[str, Any]) -> Any:
        kinds = list(config.get("layer_types") or ())
        if self.kind not in kinds:
            return None
        index = kinds.index(self.kind)
        per_layer = config.get("per_layer_config")
        for key, values in per_layer.items() if isinstance(per_layer, dict) else ():
            is_layer = str(key).isdigit() and int(key) == index
            if is_layer and isinstance(values, dict) and self.field in values:
                return values[self.field]
        return config.get(self.field)


COMPUTED = From | CountOf | FlagsOf | IndicesOf | ValuesOf | RotaryDims | OfLayerKind
PARTIAL_ROTARY = ("rope_parameters", "partial_rotary_factor")
