"""A question about a picture, answered by a GGUF model and its mmproj through ``llama-mtmd-cli``.

Everything that can be checked before llama.cpp starts is: the model is a language model, the
projector is an mmproj whose output width is the model's embedding width (llama.cpp would
otherwise fail deep inside or answer nonsense), and the picture is a readable image within size
limits, checked from its header before a pixel is decoded. A picture in a format llama.cpp's
image loader does not read is handed to it re-encoded as PNG.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, ToolMissingError, UsageError
from ggufkit.core.log import get_logger

log = get_logger("inference.image_chat")

MAX_PICTURE_BYTES = 64 * 1024 * 1024
MAX_PICTURE_PIXELS = 50_000_000  # 50 megapixels, checked from the header before decoding
# Formats llama.cpp's loader (stb_image) reads; others are re-encoded as PNG first.
LLAMA_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "TGA", "PPM"})
MTMD_CLI = "llama-mtmd-cli"
TOOL_HINT = (
    "see the log: llama.cpp's own message (a projector made for another model can make it abort)"
)


@dataclass
class ImageChatResult:
    answer: str
    model: Path
    mmproj: Path
    image: Path
    seconds: float
    log_path: Path

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def find_mtmd_cli() -> Path:
    """``llama-mtmd-cli`` of ggufkit's llama.cpp build (or of ``GGUFKIT_BUILD_DIR``)."""
    from ggufkit.llamacpp.build import find_tool

    try:
        return find_tool(MTMD_CLI)
    except ToolMissingError as exc:
        raise ToolMissingError(
            f"{MTMD_CLI} is not built: {exc}",
            hint="`ggufkit build` builds it (a few minutes more once), or point "
            "GGUFKIT_BUILD_DIR at a llama.cpp build tree that has it",
        ) from exc


def _metadata(path: Path) -> dict[str, Any]:
    from ggufkit.formats.gguf_reader import check_gguf

    return dict(check_gguf(path).metadata)


def check_pair(model: Path, mmproj: Path | None) -> Path:
    """The projector for ``model``: ``mmproj``, else the pair its header names (beside it).

    Raises UsageError for a text-only model without a projector, a projector given as the
    model (or a model as the projector), and a projector whose width is not the model's.
    """
    if model.is_dir():
        _refuse_checkpoint(model)
    meta = _metadata(model)
    arch = str(meta.get("general.architecture"))
    if arch == "clip":
        raise UsageError(
            f"{model} is an mmproj (a vision projector), not a language model",
            hint="give the language model as MODEL and this file with --mmproj",
        )
    if mmproj is None:
        paired = meta.get("ggufkit.vision.pair")
        if isinstance(paired, str):
            paired = Path(paired).name  # beside the model, whatever the header says
        if not isinstance(paired, str) or not (model.parent / paired).is_file():
            raise UsageError(
                f"{model} ({arch}) has no vision projector: --image needs its mmproj file"
                + (f" ({paired}, not found beside it)" if isinstance(paired, str) else ""),
                hint="give --mmproj MMPROJ.gguf (convert writes mmproj-<model>.gguf for a "
                "vision-language checkpoint); a text-only model cannot read pictures",
            )
        mmproj = model.parent / paired
    projector = _metadata(mmproj)
    if projector.get("general.architecture") != "clip" or not projector.get(
        "clip.has_vision_encoder"
    ):
        raise UsageError(
            f"{mmproj} is not a vision mmproj (architecture "
            f"{projector.get('general.architecture')!r})",
            hint="give the mmproj-*.gguf written beside the model by `ggufkit convert`",
        )
    width = meta.get(f"{arch}.embedding_length")
    out = projector.get("clip.vision.projection_dim")
    if isinstance(width, int) and isinstance(out, int) and width != out:
        raise UsageError(
            f"{mmproj.name} does not belong to {model.name}: its projector writes {out}-wide "
            f"embeddings, the model's are {width} wide",
            hint="give the mmproj converted from the same checkpoint as the model",
        )
    _check_same_source(model, meta, mmproj, projector)
    return mmproj


def _check_same_source(
    model: Path, meta: dict[str, Any], mmproj: Path, projector: dict[str, Any]
) -> None:
    """A projector of another model, though as wide: llama.cpp can abort on it (a projector
    type that needs image tokens the model's vocabulary lacks). Files ggufkit converted name
    their pair; when those names and the models' names both disagree, it is refused. Otherwise
    differing ``general.name`` values are only warned about (a fine-tune may reuse its base
    model's projector)."""
    pair, paired = meta.get("ggufkit.vision.pair"), projector.get("ggufkit.vision.pair")
    names = (meta.get("general.name"), projector.get("general.name"))
    if isinstance(pair, str) and isinstance(paired, str):
        from ggufkit.convert.vision import converted_together

        if converted_together(pair, paired):
            return  # whatever the files are called now
    if names[0] == names[1] or not all(isinstance(n, str) for n in names):
        return
    if isinstance(pair, str) and isinstance(paired, str):
        raise UsageError(
            f"{mmproj.name} does not belong to {model.name}: it was converted from {names[1]!r} "
            f"(with {paired}), the model from {names[0]!r} (with its projector {pair})",
            hint=f"give the mmproj converted with the model ({pair}, written beside it)",
        )
    log.warning(
        "%s is from %r and %s from %r: if the projector was not made for this model, llama.cpp "
        "may fail or answer nonsense", mmproj.name, names[1], model.name, names[0],
    )  # fmt: skip


def _refuse_checkpoint(folder: Path) -> None:
    """A checkpoint folder given as MODEL: a text-only one cannot read pictures; a vision one is
    converted first."""
    from ggufkit.core.fsutil import read_json

    config = read_json(folder / "config.json", InputError, missing={})
    if isinstance(config, dict) and isinstance(config.get("vision_config"), dict):
        raise UsageError(
            f"{folder} is a checkpoint folder; --image runs its GGUF files",
            hint=f"convert it first: `ggufkit convert {folder}` writes the model and its "
            "mmproj-<model> file; then give the model",
        )
    raise UsageError(
        f"{folder} is a text-only checkpoint (no vision_config in its config.json): it cannot "
        "read pictures",
        hint="give a vision-language model converted by `ggufkit convert` (it writes the model "
        "and its mmproj), or drop --image",
    )


def check_picture(path: Path, scratch: Path) -> Path:
    """``path`` if llama.cpp can read it as is, else a PNG copy in ``scratch``.

    The file size and the pixel count (from the header) are limited before anything is decoded;
    then the picture is decoded once, so a damaged file is an InputError here, not llama.cpp's.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ToolMissingError(
            "reading a picture needs Pillow", hint="pip install 'ggufkit[vision]'"
        ) from exc
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(
            f"cannot read the picture {path}: {exc.strerror or exc}",
            hint="check the path and that the file can be read",
        ) from exc
    if size > MAX_PICTURE_BYTES:
        raise InputError(
            f"the picture {path} is {size:,} bytes, over the limit of {MAX_PICTURE_BYTES:,}",
            hint="scale it down first; models see a few hundred pixels a side",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PICTURE_PIXELS:
                    raise InputError(
                        f"the picture {path} is {width}x{height} pixels, over the limit of "
                        f"{MAX_PICTURE_PIXELS:,}",
                        hint="scale it down first; models see a few hundred pixels a side",
                    )
                image.load()
                if image.format in LLAMA_FORMATS:
                    return path
                copy = scratch / "picture.png"
                image.convert("RGB").save(copy, format="PNG")
                log.info("%s (%s) handed to llama.cpp as PNG", path.name, image.format)
                return copy
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"the picture {path} is too large to decode safely: {exc}",
            hint="scale it down first",
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's "cannot identify", truncation
        raise InputError(
            f"cannot read {path} as a picture: {exc}",
            hint="give a PNG, JPEG, BMP or GIF file",
        ) from exc


def sampling_args(
    max_tokens: int, temperature: float, seed: int | None, ctx: int | None, threads: int | None
) -> list[str]:
    """llama-mtmd-cli's options for what ``run`` was given."""
    args = ["-n", str(max_tokens), "--temp", str(temperature)]
    for flag, value in (("--seed", seed), ("-c", ctx), ("-t", threads)):
        if value is not None:
            args += [flag, str(value)]
    return args


def image_chat(
    model: Path,
    prompt: str,
    image: Path,
    *,
    mmproj: Path | None = None,
    max_tokens: int = 128,
    temperature: float = 0.8,
    seed: int | None = None,
    ctx: int | None = None,
    threads: int | None = None,
) -> ImageChatResult:
    """Ask ``prompt`` about ``image``; the model's chat template frames the question."""
    from ggufkit.llamacpp.runner import run_tool

    mmproj = check_pair(model, mmproj)
    with tempfile.TemporaryDirectory(prefix="ggufkit-image-") as scratch:
        picture = check_picture(image, Path(scratch))
        tool = find_mtmd_cli()
        args: list[str | Path] = [
            tool, "-m", model, "--mmproj", mmproj, "--image", picture, "-p", prompt,
            *sampling_args(max_tokens, temperature, seed, ctx, threads),
        ]  # fmt: skip
        result = run_tool(args, what=MTMD_CLI, hint=TOOL_HINT)
    return ImageChatResult(
        answer=result.stdout.strip(),
        model=model,
        mmproj=mmproj,
        image=image,
        seconds=result.seconds,
        log_path=result.log_path,
    )
