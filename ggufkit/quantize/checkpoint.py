"""``ggufkit quantize ./checkpoint q4_k_m``: a Hugging Face checkpoint to quantized files in one
command. The checkpoint is converted to F16 in a temporary folder beside the outputs (removed
afterwards, also when a step fails), and that file is quantized."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    from ggufkit.convert import ConvertResult
    from ggufkit.formats.gguf_split import SplitLimits
    from ggufkit.quantize import QuantizeResult
    from ggufkit.quantize.engines import QuantizeOptions

log = get_logger("quantize")
TEMP_PREFIX = ".ggufkit-f16-"


def is_checkpoint(path: Path) -> bool:
    """A Hugging Face checkpoint directory (it has a config.json)."""
    return path.is_dir() and (path / "config.json").is_file()


def quantize_checkpoint(
    model: Path,
    types: Sequence[str],
    *,
    output: Path | None = None,
    outdir: Path | None = None,
    options: QuantizeOptions | None = None,
    split: SplitLimits | None = None,
    force: bool = False,
    threads: int | None = None,
) -> tuple[ConvertResult, list[QuantizeResult]]:
    """Convert ``model`` to a temporary F16 file, quantize it to each of ``types`` (named
    ``<model>-<TYPE>.gguf`` in ``outdir``, default the current folder, or ``output``), and
    remove the F16 file. Returns the conversion and the quantized files."""
    from ggufkit.convert import convert
    from ggufkit.core.errors import UsageError
    from ggufkit.core.partials import owned_temp_dir
    from ggufkit.quantize import quantize

    where = outdir or (output.parent if output is not None else Path.cwd())
    name = model.resolve().name
    planned = (
        [output] if output is not None else [where / f"{name}-{t.upper()}.gguf" for t in types]
    )
    existing = [p for p in planned if p is not None and p.exists()]
    if existing and not force:  # before the conversion, not after it
        raise UsageError(
            f"{existing[0]} already exists", hint="pass --force to overwrite it, or choose -o"
        )
    where.mkdir(parents=True, exist_ok=True)
    with owned_temp_dir(TEMP_PREFIX, parent=where) as tmp:
        f16 = tmp / f"{name}-F16.gguf"
        converted = convert(model, f16, outtype="f16", threads=threads)
        log.info("%s: converted to F16 first (a temporary file, removed afterwards)", model)
        results = quantize(
            f16,
            types,
            output=output,
            outdir=None if output is not None else where,
            options=options,
            split=split,
            force=force,
        )
    return converted, results
