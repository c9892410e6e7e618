"""The batch tests' plan (the embedded models × 3 types, with an importance matrix) and the same
outputs made by hand, one `ggufkit` command at a time, to compare bytes with."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.fsutil import sha256_file
from ggufkit.data import calibration_corpus, embedded_model

TYPES = ("q4_0", "q8_0", "q5_0")
# name -> (source, delta base)
MODELS = {
    "tiny-llama": ("tiny-llama", None),
    "milton": ("tiny-llama-milton-delta", "tiny-llama"),
    "tiny-bloom": ("tiny-bloom", None),
}
IMATRIX_CTX, IMATRIX_CHUNKS = 128, 2


def write_plan(
    directory: Path, *, extra: str = "", models: tuple[str, ...] = tuple(MODELS)
) -> Path:
    lines = ['outdir = "out"', f"types = {list(TYPES)!r}".replace("'", '"')]
    for name in models:
        source, base = MODELS[name]
        lines += ["[[models]]", f'source = "{embedded_model(source)}"', f'name = "{name}"']
        lines += [f'delta_base = "{embedded_model(base)}"'] if base else []
    lines += ["[imatrix]", f"ctx = {IMATRIX_CTX}", f"chunks = {IMATRIX_CHUNKS}"]
    path = directory / "batch.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def _run(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def by_hand(directory: Path, models: tuple[str, ...] = tuple(MODELS)) -> dict[str, str]:
    """``<model>/<file name>`` -> sha256 of each GGUF and imatrix file, made command by command
    in ``directory`` (then removed): where the batch will write them, since a quantized file
    records the path of its importance matrix."""
    digests = {}
    for name in models:
        source, base = MODELS[name]
        out = directory / name
        f16, imatrix = out / f"{name}-F16.gguf", out / f"{name}-imatrix.gguf"
        convert = ["convert", embedded_model(source), "-o", f16, "--outtype", "f16"]
        _run(convert + (["--delta-base", embedded_model(base)] if base else []))
        imatrix_args = ["--ctx", IMATRIX_CTX, "--chunks", IMATRIX_CHUNKS]
        _run(["imatrix", f16, "--corpus", calibration_corpus(), "-o", imatrix, *imatrix_args])
        files = [f16, imatrix]
        for qtype in TYPES:
            target = out / f"{name}-{qtype.upper()}.gguf"
            _run(["quantize", f16, qtype, "-o", target, "--imatrix", imatrix])
            files.append(target)
        digests.update({f"{name}/{p.name}": sha256_file(p) for p in files})
    shutil.rmtree(directory)
    return digests


def batch_digests(outdir: Path) -> dict[str, str]:
    """The same files as :func:`by_hand` names, from a batch's output folder."""
    return {f"{p.parent.name}/{p.name}": sha256_file(p) for p in sorted(outdir.glob("*/*.gguf"))}


def partial_files(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.rglob("*") if p.name.endswith(".partial"))
