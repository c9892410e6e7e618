"""How ``ggufkit run`` samples: one value, built once at the command line and passed down."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one generation (or of every reply of a conversation).

    ``seed`` None: one is drawn when the model is opened, and reported;
    ``stop``: strings that end a reply (the chat template's own are added by ``converse``).
    """

    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def with_stops(self, first: Sequence[str]) -> Sampling:
        """These settings with ``first`` stop strings ahead of the given ones."""
        return dataclasses.replace(self, stop=(*first, *self.stop)) if first else self

    def with_seed(self, seed: int) -> Sampling:
        return dataclasses.replace(self, seed=seed)

    def completion_options(self) -> dict[str, Any]:
        """llama-cpp-python's keyword arguments of a streamed completion."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop) or None,
            "stream": True,
        }
