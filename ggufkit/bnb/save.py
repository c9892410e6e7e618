"""``--save``: write a quantized model with ``save_pretrained`` and prove that it reloads the same.

bitsandbytes 0.50 corrupts nf4 weights (without double quant) when a model is saved after a CPU
forward has repacked them (defect 3 in :mod:`ggufkit.bnb.guards`). So the model is saved right
after loading, and the saved copy is reloaded and compared with the in-memory model: the
dequantized weights of every quantized layer, then the logits on a probe input.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ggufkit.bnb.guards import (
    fingerprint_mismatches,
    guard_fast_path,
    packed_modules,
    shorten,
    weight_fingerprint,
)
from ggufkit.core.errors import EvaluationError
from ggufkit.core.fsutil import atomic_dir

# Tokenizer files transformers 5 may not write back (sentencepiece models): copied as they are.
TOKENIZER_EXTRAS = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
LOGIT_TOLERANCE = 1e-4  # relative to the largest |logit|


def save_quantized(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    source_dir: Path,
    load_kwargs: dict[str, Any],
    probe: Mapping[str, Any],
    auto_class: Any = None,
) -> str:
    """Save ``model`` (safetensors) and ``tokenizer`` to ``out_dir``, reload and verify them.

    ``tokenizer`` is anything with ``save_pretrained`` (a tokenizer, a processor). ``load_kwargs``
    are the ``from_pretrained`` arguments for the reload (device map, dtype, trust_remote_code;
    no quantization config: the saved config carries it); ``probe`` the model inputs whose
    logits are compared; ``auto_class`` the class that reloads it (default
    ``AutoModelForCausalLM``). Returns a note. Nothing is left at ``out_dir`` when saving or
    verifying fails.
    """
    packed = packed_modules(model)
    if packed:
        raise EvaluationError(
            f"cannot save: {len(packed)} 4-bit layer(s) ({shorten(packed)}) were repacked by a "
            "CPU forward, and bitsandbytes 0.50 writes such layers corrupt",
            hint="save right after loading, before generating (ggufkit bnb --save does)",
        )
    expected = weight_fingerprint(model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in TOKENIZER_EXTRAS:
            if (source_dir / name).is_file() and not (tmp / name).exists():
                shutil.copy2(source_dir / name, tmp / name)
        delta = verify_saved(
            model,
            tmp,
            expected,
            load_kwargs=load_kwargs,
            probe=probe,
            label=out_dir,
            auto_class=auto_class,
        )
    return f"saved to {out_dir}; reloaded weights match and logits differ by {delta:.3g} at most"


def verify_saved(
    model: Any,
    saved_dir: Path,
    expected: dict[str, tuple[float, float]],
    *,
    load_kwargs: dict[str, Any],
    probe: Mapping[str, Any],
    label: Path | None = None,
    auto_class: Any = None,
) -> float:
    """Reload ``saved_dir``; raise unless its weights and logits match ``model``. Returns max |Δlogit|.

    ``label`` is the name the messages use (the final directory while ``saved_dir`` is temporary).
    """
    import torch

    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class

    label = label or saved_dir
    reloaded = auto_class.from_pretrained(saved_dir, **load_kwargs)
    try:
        guard_fast_path(reloaded, "the reloaded copy")  # as the model in memory was
        bad = fingerprint_mismatches(expected, weight_fingerprint(reloaded))
        if bad:
            raise EvaluationError(
                f"the weights saved in {label} differ from the quantized model in "
                f"{len(bad)} layer(s) ({shorten(bad)})",
                hint="this is a bitsandbytes save defect; nothing was kept. Save without "
                "running the model first, or use double quantization (nf4-dq)",
            )
        with torch.inference_mode():
            ours = model(**{k: v.to(model.device) for k, v in probe.items()})
            theirs = reloaded(**{k: v.to(reloaded.device) for k, v in probe.items()})
            ours, theirs = ours.logits.float().cpu(), theirs.logits.float().cpu()
        delta = float((ours - theirs).abs().max())
        scale = float(ours.abs().max().clamp_min(1.0))
        if not delta <= LOGIT_TOLERANCE * scale:
            raise EvaluationError(
                f"the model saved in {label} gives other logits than the one in memory "
                f"(max |Δ| {delta:.3g})",
                hint="nothing was kept; report it with GGUFKIT_DEBUG=1 output",
            )
        return delta
    finally:
        del reloaded
