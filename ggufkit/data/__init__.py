"""The tiny models and texts shipped inside ggufkit, so that the whole pipeline runs offline.

They are trained by ``scripts/train_tiny.py`` (the source of truth: corpus split, dimensions,
seeds) on public-domain Gutenberg texts of Shakespeare and Milton:

- ``tiny-llama``: a LlamaForCausalLM with a sentencepiece tokenizer, trained on Shakespeare;
- ``tiny-llama-milton-delta``: a delta against tiny-llama (fine-tuned on Paradise Lost, one
  ``<pad>`` token added), the way Vicuna and Chimera ship their weights;
- ``tiny-bloom``: a BloomForCausalLM with a byte-level BPE tokenizer, like Phoenix and BLOOMZ;
- ``tiny-llama-milton-lora``: a PEFT LoRA adapter on tiny-llama trained on Paradise Lost, the way
  fine-tunes ship today (``embedded_adapter``).
- ``tiny-minicpmv``: a seeded random MiniCPM-V 4.6 (vision tower, projector, Qwen3.5 text model,
  its tokenizer and image processor), built by ``scripts/tiny_vlm.py``, not trained: it reads a
  picture and answers noise; with ``pictures/shapes.png`` (``embedded_picture``) for the demo.

The held-out text (Macbeth, never trained on) is the default evaluation corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError

DATA_DIR = Path(__file__).resolve().parent
MODELS_DIR = DATA_DIR / "models"
CORPUS_DIR = DATA_DIR / "corpus"
PICTURES_DIR = DATA_DIR / "pictures"

EMBEDDED_MODELS: dict[str, str] = {
    "tiny-llama": "LlamaForCausalLM (3.4M parameters, GQA) with a sentencepiece tokenizer, "
    "trained on Shakespeare",
    "tiny-llama-milton-delta": "delta against tiny-llama: fine-tuned on Milton's Paradise Lost "
    "with an added <pad> token (vocab 2048 -> 2049)",
    "tiny-bloom": "BloomForCausalLM (2.2M parameters) with a byte-level BPE tokenizer, "
    "trained on Shakespeare",
    "tiny-minicpmv": "MiniCPMV4_6ForConditionalGeneration (0.5M parameters): a vision-language "
    "model with random seeded weights (it answers noise), for the image paths",
}

# delta name -> the embedded model it applies to
DELTA_BASES: dict[str, str] = {"tiny-llama-milton-delta": "tiny-llama"}

# PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) -> their base
EMBEDDED_ADAPTERS: dict[str, str] = {
    "tiny-llama-milton-lora": "LoRA on tiny-llama (r=8 on every linear layer, float16): "
    "trained on Milton's Paradise Lost"
}
ADAPTER_BASES: dict[str, str] = {"tiny-llama-milton-lora": "tiny-llama"}

REGENERATE_HINT = (
    "reinstall ggufkit, or regenerate the models from a checkout with "
    "`python scripts/train_tiny.py --out ggufkit/data/models`"
)


def embedded_model(name: str) -> Path:
    """The directory of an embedded model (an HF checkpoint, or a delta for DELTA_BASES)."""
    if name not in EMBEDDED_MODELS:
        available = ", ".join(EMBEDDED_MODELS)
        raise UsageError(
            f"no embedded model named {name!r}; available: {available}",
            hint=f"use one of: {available}",
        )
    path = MODELS_DIR / name
    if not (path / "config.json").is_file():
        raise InputError(
            f"the embedded model {name} is missing from {path}", hint=REGENERATE_HINT, path=path
        )
    return path


def embedded_adapter(name: str) -> Path:
    """The directory of an embedded LoRA adapter (its base: ``ADAPTER_BASES[name]``)."""
    if name not in EMBEDDED_ADAPTERS:
        available = ", ".join(EMBEDDED_ADAPTERS)
        raise UsageError(f"no embedded adapter named {name!r}", hint=f"use one of: {available}")
    path = MODELS_DIR / name
    if not (path / "adapter_config.json").is_file():
        raise InputError(
            f"the embedded adapter {name} is missing from {path}", hint=REGENERATE_HINT, path=path
        )
    return path


def embedded_text(name: str) -> Path:
    """One of the texts shipped beside the models, by file name (e.g. ``heldout.txt``)."""
    path = CORPUS_DIR / name
    if not path.is_file():
        raise InputError(f"the embedded text {path} is missing", hint=REGENERATE_HINT, path=path)
    return path


def embedded_picture(name: str = "shapes.png") -> Path:
    """A picture shipped beside the models (``scripts/tiny_vlm.py`` draws it)."""
    path = PICTURES_DIR / name
    if not path.is_file():
        hint = (
            "reinstall ggufkit, or redraw it with `python scripts/tiny_vlm.py --out ggufkit/data`"
        )
        raise InputError(f"the embedded picture {path} is missing", hint=hint, path=path)
    return path


def default_corpus() -> Path:
    """Held-out Shakespeare (Macbeth, ~100 kB): the default text for perplexity."""
    return embedded_text("heldout.txt")


def calibration_corpus() -> Path:
    """A ~24 kB excerpt of the training text (Hamlet): calibration data for an imatrix."""
    return embedded_text("calibration.txt")


def milton_corpus() -> Path:
    """Held-out Milton (Paradise Regained): shows what the Milton delta learned."""
    return embedded_text("heldout-milton.txt")


def training_record() -> dict[str, Any]:
    """The figures train_tiny.py recorded: steps, parameters, times, perplexities per model."""
    path = MODELS_DIR / "training.json"
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", hint=REGENERATE_HINT, path=path) from exc
    return record
