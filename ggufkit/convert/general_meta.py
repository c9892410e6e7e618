"""The pinned converter's ``general.*`` authorship keys for the native engine.

Upstream's ``prepare_metadata`` reads the model card (README.md front matter), config.json and
generation_config.json through gguf-py's ``Metadata.load``, derives ``size_label`` from the
written tensors' parameter count, and writes ``general.type``, ``basename``, ``size_label``,
``finetune``, ``license``, ``languages``, ``organization``, ``general.sampling.*`` and the rest
that it finds. The native engine asks the same ``Metadata`` (the PyPI gguf-py pinned in
pyproject, the pinned source's own but for one line, mended below) and writes every key upstream
would, except those the native engine already wrote itself (``general.name``: ggufkit names a
file after its folder or repo, where upstream title-cases a guess).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import yaml  # gguf-py's own dependency: the model card's front matter

from ggufkit.core.errors import InputError
from ggufkit.core.fsutil import read_json, read_settings_text

MAX_MODEL_CARD_BYTES = 16 * 1024 * 1024  # a model card is text; real ones are kilobytes


def _check_inputs(model_dir: Path) -> None:
    """The files gguf-py's ``Metadata.load`` opens unbounded, checked first with ggufkit's limits:
    a fifo, a huge file or JSON nested past the parser fails here, naming the file."""
    card = model_dir / "README.md"
    if card.exists():
        read_settings_text(card, InputError, hint=_CARD_HINT, limit=MAX_MODEL_CARD_BYTES)
    read_json(model_dir / "generation_config.json", InputError, missing=None)


_CARD_HINT = "fix or remove the model card (README.md); the weights do not need it"


def parameter_counts(tensors: Iterable[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, expert, expert count) as gguf-py's ``get_total_parameter_count`` counts
    the written tensors (name, shape): a ``_exps.`` tensor counts one expert's share."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in tensors:
        size = math.prod(shape)
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    if n_expert_tensors:
        return total, shared, expert, expert_sum // n_expert_tensors
    return total, shared, expert, 0


def upstream_metadata(model_dir: Path, counts: tuple[int, int, int, int]) -> Any:
    """gguf-py's ``Metadata`` for ``model_dir`` as the pinned converter prepares it."""
    total, shared, expert, expert_count = counts
    _check_inputs(model_dir)
    try:
        metadata = gguf.Metadata.load(None, model_dir, None, total)
    except (yaml.YAMLError, RecursionError, ValueError, ArithmeticError) as exc:
        raise InputError(
            f"{model_dir / 'README.md'}'s front matter cannot be read: {type(exc).__name__}",
            hint=_CARD_HINT,
            path=model_dir / "README.md",
        ) from exc
    if metadata.sampling_penalty_repeat is None:  # the pinned gguf-py also reads this name
        generation = model_dir / "generation_config.json"
        if generation.is_file():
            value = read_json(generation, InputError).get("repetition_penalty")
            if value is not None:
                metadata.sampling_penalty_repeat = value
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, expert_count)
    return metadata


def add_upstream_general(
    writer: gguf.GGUFWriter, model_dir: Path, tensors: Iterable[tuple[str, tuple[int, ...]]]
) -> None:
    """Add the ``general.*`` keys upstream writes and ``writer`` does not hold yet."""
    metadata = upstream_metadata(model_dir, parameter_counts(tensors))
    scratch = gguf.GGUFWriter(path=None, arch=writer.arch)
    scratch.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(scratch)
    have = writer.kv_data[0]
    for key, value in scratch.kv_data[0].items():
        if key.startswith("general.") and key not in have:
            have[key] = value
