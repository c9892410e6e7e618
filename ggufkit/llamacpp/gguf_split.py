"""The built ``llama-gguf-split``: cut a GGUF into a split set, or merge a set into one file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ggufkit.llamacpp.build import find_tool
from ggufkit.llamacpp.runner import run_tool


def split_file(source: Path, out_prefix: Path, limit_args: Sequence[str]) -> None:
    """Write ``<out_prefix>-00001-of-0000N.gguf`` … from ``source`` (``limit_args``: the tool's
    ``--split-max-size SIZE`` or ``--split-max-tensors N``)."""
    tool = find_tool("llama-gguf-split")
    run_tool([tool, "--split", *limit_args, source, out_prefix], what="llama-gguf-split --split")


def merge_files(first_shard: Path, output: Path) -> None:
    """Merge the split set that starts at ``first_shard`` into ``output`` (the tool keeps the
    first shard's ``split.*`` keys, with ``split.count`` 0)."""
    tool = find_tool("llama-gguf-split")
    run_tool([tool, "--merge", first_shard, output], what="llama-gguf-split --merge")
