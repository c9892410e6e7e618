"""``ggufkit verify --image``: does a GGUF model + mmproj see a picture as its checkpoint does?

Two checks, both against transformers in fp32 on the same picture (decoded once with Pillow):

1. Image embeddings: llama.cpp's vision encoder + projector (libmtmd, :mod:`.mtmd_embed`) against
   the checkpoint's vision tower + projector on its own processor's output. The number of image
   tokens must agree first (the same slices and patches); then each token's largest difference,
   as a fraction of that token's largest reference value; the worst token is judged.
2. The language model's logits for the text after the image, llama.cpp fed its own image
   embeddings, against transformers fed its own: the token ids are llama.cpp's layout of the
   prompt, with the image tokens in the places llama.cpp gives them. Positions: where llama.cpp
   and transformers lay image tokens out alike (Qwen2-VL: M-RoPE on the image grid in both), as
   llama.cpp runs; where they differ (MiniCPM-V: llama.cpp 2-D, transformers 1-D), llama.cpp is
   given transformers' positions, and the report says so.

Limits as text verify's: 1 % of the largest reference value for unquantized files (embeddings: of
each token's); a quantized model or mmproj is only reported unless a limit is given.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.inference.mtmd_embed import MtmdResult, Positions
from ggufkit.inference.parity import ParityReport, _import_transformers

# transformers' model type -> how llama.cpp's image positions are fed, and why.
FAMILIES: dict[str, tuple[Positions, str]] = {
    "qwen2_vl": ("native", "image tokens on M-RoPE grid positions in both"),
    "minicpmv4_6": (
        "linear",
        "llama.cpp lays MiniCPM-V's image tokens on 2-D M-RoPE positions, transformers on 1-D "
        "ones: llama.cpp's logits after the image are computed at transformers' 1-D positions",
    ),
}
PROMPT_AFTER = "\nWhat is in the picture? Describe it in a few words."


@dataclass
class EmbeddingReport:
    """llama.cpp's image embeddings vs the reference's, token by token."""

    n_tokens: int
    per_token: list[float] = field(repr=False)  # max |Δ| / max |reference| of each token
    max_abs_diff: float
    max_abs_value: float  # of the reference

    @property
    def rel_diff(self) -> float:
        return max(self.per_token, default=0.0)

    @property
    def worst_token(self) -> int:
        return int(np.argmax(self.per_token)) if self.per_token else 0

    def summary(self) -> str:
        return (
            f"{self.n_tokens} image tokens: worst token {self.worst_token} off by "
            f"{100 * self.rel_diff:.3f}% of its max |value| (max |Δ| {self.max_abs_diff:.4g}, "
            f"max |value| {self.max_abs_value:.3g})"
        )


def compare_embeddings(reference: np.ndarray, got: np.ndarray) -> EmbeddingReport:
    if reference.shape != got.shape:
        raise EvaluationError(
            f"llama.cpp's image embeddings are {got.shape[0]} x {got.shape[-1]}, transformers' "
            f"{reference.shape[0]} x {reference.shape[-1]}: not the same projector's output",
            hint="give --against the checkpoint the model and mmproj were converted from",
        )
    ref, out = reference.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref - out)
    scale = np.abs(ref).max(axis=1)
    per_token = np.where(scale > 0, diff.max(axis=1) / np.where(scale > 0, scale, 1.0), 0.0)
    return EmbeddingReport(
        n_tokens=int(ref.shape[0]),
        per_token=[float(v) for v in per_token],
        max_abs_diff=float(diff.max()),
        max_abs_value=float(np.abs(ref).max()),
    )


@dataclass
class ImageVerifyReport:
    gguf: str
    mmproj: str
    against: str
    image: str
    fitted: str | None  # what was done to the picture before both sides saw it
    type: str
    quantized: bool
    layout: str  # the prompt as llama.cpp lays it out
    positions: str  # how the logits' positions were made equal
    embeddings: EmbeddingReport
    logits: ParityReport
    max_rel_diff: float | None  # None: reported, not judged
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        e, lg = self.embeddings, self.logits
        return {
            "gguf": self.gguf,
            "mmproj": self.mmproj,
            "against": self.against,
            "image": self.image,
            "fitted": self.fitted,
            "type": self.type,
            "quantized": self.quantized,
            "layout": self.layout,
            "positions": self.positions,
            "embeddings": {
                "n_tokens": e.n_tokens,
                "rel_diff": e.rel_diff,
                "worst_token": e.worst_token,
                "per_token_rel_diff": e.per_token,
                "max_abs_diff": e.max_abs_diff,
                "max_abs_value": e.max_abs_value,
            },
            "logits": lg.to_json(),
            "max_rel_diff": self.max_rel_diff,
            "passed": self.passed,
            "problems": self.problems,
        }

    def text(self) -> str:
        lines = [
            f"file:       {self.gguf} ({self.type})",
            f"mmproj:     {self.mmproj}",
            f"against:    {self.against}",
            f"image:      {self.image}" + (f" ({self.fitted})" if self.fitted else ""),
            f"layout:     {self.layout}",
            f"embeddings: {self.embeddings.summary()}",
            f"logits:     {self.logits.summary()} (the text after the image)",
            f"positions:  {self.positions}",
        ]
        if self.max_rel_diff is None:
            lines.append("limit:      (quantized: reported, not judged; give --max-rel-diff)")
        else:
            lines.append(
                f"limit:      {100 * self.max_rel_diff:g}% of each token's max |value| "
                "(embeddings) and of max |logit| (logits)"
            )
        lines.append("verdict:    " + ("PASS" if self.passed else "FAIL"))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def _family(hf_dir: Path) -> tuple[str, Positions, str]:
    from ggufkit.formats.hfconfig import load_config

    model_type = str(load_config(hf_dir).get("model_type"))
    if model_type not in FAMILIES:
        raise UsageError(
            f"verify --image knows how to compare {', '.join(sorted(FAMILIES))}, not "
            f"{model_type!r} ({hf_dir})",
            hint="verify the language model alone (without --image), or run the picture "
            "through `ggufkit run --image`",
        )
    positions, why = FAMILIES[model_type]
    return model_type, positions, why


def _processor(hf_dir: Path) -> Any:
    _, transformers = _import_transformers()
    return transformers.AutoImageProcessor.from_pretrained(str(hf_dir), backend="pil")


def fit_picture(processor: Any, picture: Path, scratch: Path) -> tuple[Path, str | None]:
    """The picture both sides are given, and what was done to it.

    llama.cpp and transformers resize a picture with different kernels, which moves the
    embeddings by far more than any conversion error. The picture is resized here, with the
    processor's own resampling, to the size the processor would resize it to (Qwen2-VL; a
    MiniCPM-V overview), or cut into slices from (MiniCPM-V's slices), so that neither side
    resizes it again before it reaches the vision tower."""
    from PIL import Image

    with Image.open(picture) as image:
        rgb = image.convert("RGB")
    inputs = processor(images=[rgb])
    patch = int(getattr(processor, "patch_size", 0) or 0)
    grid = inputs.get("image_grid_thw")
    sizes = inputs.get("target_sizes")
    slices = (inputs.get("grids") or [[0, 0]])[0]
    if grid is not None and len(grid) == 1:
        rows, cols = int(grid[0][1]), int(grid[0][2])
    elif sizes is not None and len(sizes) == 1:
        rows, cols = int(sizes[0][0]), int(sizes[0][1])
    elif sizes is not None and len(sizes) == 1 + int(slices[0]) * int(slices[1]):
        # an overview and slices (MiniCPM-V): the size it cuts into slices, so that both sides
        # cut the same pixels (the overview, resized from it, agrees)
        rows, cols = int(sizes[1][0]) * int(slices[0]), int(sizes[1][1]) * int(slices[1])
    else:
        return picture, None
    size = (cols * patch, rows * patch)
    if not patch or size == rgb.size:
        return picture, None
    resample = Image.Resampling(int(getattr(processor, "resample", Image.Resampling.BICUBIC)))
    fitted = scratch / "fitted.png"
    rgb.resize(size, resample=resample).save(fitted, format="PNG")
    return fitted, (
        f"resized {rgb.size[0]}x{rgb.size[1]} -> {size[0]}x{size[1]} ({resample.name.lower()}, "
        "the checkpoint processor's size and filter) before both sides, which resize differently"
    )


def reference_side(
    hf_dir: Path, processor: Any, picture: Path, result: MtmdResult
) -> tuple[np.ndarray, np.ndarray | None]:
    """transformers' image embeddings for ``picture``, and (when it lays the picture out in as
    many tokens as llama.cpp did) its logits for the text after the image in llama.cpp's
    layout of the prompt; ``None`` for the logits otherwise."""
    from PIL import Image

    torch, transformers = _import_transformers()
    with Image.open(picture) as image:
        inputs = processor(images=[image.convert("RGB")], return_tensors="pt")
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        str(hf_dir), dtype=torch.float32
    )
    model.eval()
    wanted = inspect.signature(model.model.get_image_features).parameters
    image_inputs = {k: v for k, v in inputs.items() if k in wanted}
    with torch.no_grad():
        features = model.model.get_image_features(**image_inputs).pooler_output
        embeddings = torch.cat(list(features), dim=0).float().numpy()
        n_image = sum(c.n_tokens for c in result.chunks if c.kind == "image")
        if embeddings.shape[0] != n_image:
            return embeddings, None
        image_id = int(model.config.image_token_id)
        ids = [t for c in result.chunks for t in (c.tokens or [image_id] * c.n_tokens)]
        input_ids = torch.tensor([ids], dtype=torch.long)
        extra: dict[str, Any] = {}
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
            extra["mm_token_type_ids"] = (input_ids == image_id).long()
        logits = model(input_ids=input_ids, **image_inputs, **extra).logits[0]
    after = len(result.logits)
    return embeddings, logits[len(ids) - after :].float().numpy()


def verify_image(
    gguf_path: str | Path,
    hf_dir: str | Path,
    image: str | Path,
    *,
    mmproj: str | Path | None = None,
    max_rel_diff: float | None = None,
    prompt: str = PROMPT_AFTER,
) -> ImageVerifyReport:
    """Compare what ``gguf_path`` + ``mmproj`` make of ``image`` with the checkpoint in ``hf_dir``:
    image embeddings and the logits of ``prompt`` after the image."""
    import tempfile

    from ggufkit.evaluate.pipeline import n_ctx_train, type_label
    from ggufkit.formats.gguf_reader import read_gguf
    from ggufkit.inference.image_chat import check_pair, check_picture
    from ggufkit.inference.mtmd_embed import VERIFY_CTX, mtmd_side
    from ggufkit.inference.parity import compare_logits
    from ggufkit.inference.verify import UNQUANTIZED_MAX_REL_DIFF, logit_problems

    gguf_path, hf_dir, image = Path(gguf_path), Path(hf_dir), Path(image)
    projector = check_pair(gguf_path, Path(mmproj) if mmproj is not None else None)
    if not (hf_dir / "config.json").is_file():
        raise UsageError(
            f"{hf_dir} is not a Hugging Face model directory (no config.json)",
            hint="--against takes the checkpoint directory the GGUF was converted from",
        )
    _, positions, why = _family(hf_dir)
    info, proj_info = (
        read_gguf(gguf_path, max_array_items=0),
        read_gguf(projector, max_array_items=0),
    )
    with tempfile.TemporaryDirectory(prefix="ggufkit-verify-image-") as scratch:
        processor = _processor(hf_dir)
        picture, fitted = fit_picture(processor, check_picture(image, Path(scratch)), Path(scratch))
        n_ctx = min(VERIFY_CTX, n_ctx_train(info) or VERIFY_CTX)
        result = mtmd_side(gguf_path, projector, picture, before="", after=prompt,
                           positions=positions, n_ctx=n_ctx)  # fmt: skip
        reference, ref_logits = reference_side(hf_dir, processor, picture, result)
    quantized = info.is_quantized or proj_info.is_quantized
    judged = max_rel_diff if max_rel_diff is not None or quantized else UNQUANTIZED_MAX_REL_DIFF
    if ref_logits is None:
        raise _count_error(result, reference.shape[0], projector)
    problems: list[str] = []
    embeddings = compare_embeddings(reference, result.embeddings)
    logits = compare_logits(ref_logits, result.logits)
    if judged is not None:
        if embeddings.rel_diff > judged:
            problems.append(
                f"image token {embeddings.worst_token} differs by "
                f"{100 * embeddings.rel_diff:.3f}% of its max |value|, above the "
                f"{100 * judged:g}% limit"
            )
        problems += logit_problems(logits, judged, where="after the image, ")
    return ImageVerifyReport(
        gguf=str(gguf_path),
        mmproj=str(projector),
        against=str(hf_dir),
        image=str(image),
        fitted=fitted,
        type=type_label(info),
        quantized=quantized,
        layout=_layout(result),
        positions=why,
        embeddings=embeddings,
        logits=logits,
        max_rel_diff=judged,
        problems=problems,
    )


def _layout(result: MtmdResult) -> str:
    parts = [
        f"{c.n_tokens} text tokens" if c.kind == "text" else f"image of {c.n_tokens} tokens"
        for c in result.chunks
    ]
    return ", ".join(parts)


def _count_error(result: MtmdResult, n_reference: int, projector: Path) -> Exception:
    n_image = sum(c.n_tokens for c in result.chunks if c.kind == "image")
    return EvaluationError(
        f"llama.cpp lays the picture out as {n_image} image tokens ({_layout(result)}), the "
        f"checkpoint's processor as {n_reference}: the two do not slice or resize it alike",
        hint=f"nothing is compared; check that {projector.name} was converted from this "
        "checkpoint, or try a picture of another size",
    )
