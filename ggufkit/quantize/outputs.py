"""Where ``quantize`` writes: each type's output file, and the rule for outputs that exist."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import check_output_path, path_key
from ggufkit.formats.gguf_split import SplitLimits, shards_named_like
from ggufkit.quantize.types import QuantType, TypeTable, output_name


def plan_outputs(
    source: Path,
    types: Sequence[QuantType],
    table: TypeTable,
    *,
    output: Path | None = None,
    outdir: Path | None = None,
) -> list[Path]:
    """Where each type goes: ``output`` (one type only), else ``<stem>-<TYPE>.gguf`` in ``outdir``
    or beside the input. Refuses directories, the input itself and two types onto one file."""
    if output is not None and outdir is not None:
        raise UsageError("give either -o/--output or --outdir, not both")
    if output is not None and len(types) > 1:
        raise UsageError(
            f"-o names one file, but {len(types)} types were asked for",
            hint="use --outdir DIR (files are named <stem>-<TYPE>.gguf) or one type per call",
        )
    if output is not None:
        targets = [Path(output)]
    else:
        folder = Path(outdir) if outdir is not None else source.parent
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--outdir {folder} is a file, not a directory")
        targets = [folder / output_name(source, t.name, table.names) for t in types]
    for target in targets:
        check_output_path(target, inputs=(source,))  # links and case folding included
    if len({path_key(t) for t in targets}) != len(targets):
        raise UsageError("two types would be written to the same file", hint="use --outdir")
    return targets


def refuse_existing(targets: Sequence[Path], split: SplitLimits | None) -> None:
    """The one rule of convert and quantize: an existing output is replaced only with --force."""
    for target in targets:
        shards = shards_named_like(target) if split is not None and split.active else []
        existing = target if target.exists() else next(iter(shards), None)
        if existing is not None:
            raise UsageError(
                f"{existing} already exists", hint="pass --force to overwrite it, or choose -o"
            )
