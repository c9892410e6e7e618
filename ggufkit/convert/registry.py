"""Which converter takes an architecture: the ``@register``-ed classes of ``ggufkit.convert.arch``
(importing that package imports every architecture module, which registers its converter)."""

from __future__ import annotations

import ggufkit.convert.arch  # noqa: F401  (registers the converters)
from ggufkit.convert.base import REGISTRY, ModelConverter
from ggufkit.core.errors import UnsupportedArchitectureError


def registered_architectures() -> list[str]:
    return sorted(REGISTRY)


def converter_for(hf_arch: str) -> type[ModelConverter] | None:
    return REGISTRY.get(hf_arch)


def unsupported(hf_arch: str, *, upstream_too: bool) -> UnsupportedArchitectureError:
    where = "ggufkit or the pinned upstream converter" if upstream_too else "ggufkit's converter"
    return UnsupportedArchitectureError(
        f"architecture {hf_arch} is not supported by {where}; "
        f"supported natively: {', '.join(registered_architectures())}",
        hint='check config.json\'s `architectures`; try `engine="upstream"` for other models',
    )
