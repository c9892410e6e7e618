"""What ``ggufkit inspect`` shows for a legacy file: format, hparams, tensor types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ggufkit.convert.legacy.reader import FTYPE_NAMES, read_legacy
from ggufkit.convert.legacy.vocab import tokenizer_required


def describe_legacy(path: str | Path) -> dict[str, Any]:
    """The facts of a legacy file, as JSON-like data."""
    legacy = read_legacy(path)
    counts: dict[str, int] = {}
    for tensor in legacy.tensors:
        counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
    return {
        "path": str(legacy.path),
        "format": legacy.label,
        "container": legacy.container,
        "version": legacy.version,
        "family": legacy.family,
        "ftype": FTYPE_NAMES.get(legacy.hparams["ftype"], str(legacy.hparams["ftype"])),
        "hparams": dict(legacy.hparams),
        "vocab_size": len(legacy.vocab),
        "vocab_has_scores": legacy.container != "ggml",
        "needs_tokenizer": tokenizer_required(legacy),
        "n_tensors": len(legacy.tensors),
        "tensor_types": counts,
        "tensors": [
            {"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.n_bytes}
            for t in legacy.tensors
        ],
        "file_bytes": int(Path(path).stat().st_size),
    }


def describe_legacy_text(info: dict[str, Any], *, tensors: bool = False) -> str:
    hp = info["hparams"]
    lines = [
        f"{info['path']}",
        f"  format: {info['format']} (legacy, pre-GGUF), {info['family']}, ftype {info['ftype']}",
        "  hparams: " + ", ".join(f"{k}={v}" for k, v in hp.items()),
        f"  vocab: {info['vocab_size']} entries"
        + (" with scores" if info["vocab_has_scores"] else " without scores"),
        f"  tensors: {info['n_tensors']} ("
        + ", ".join(f"{n} {k}" for k, n in sorted(info["tensor_types"].items()))
        + ")",
        "  convert it with: ggufkit convert FILE --tokenizer ORIGINAL_CHECKPOINT"
        + (
            f" (needed: {info['needs_tokenizer']})"
            if info["needs_tokenizer"]
            else " (optional: its sentencepiece vocabulary with scores is exact)"
        ),
    ]
    if tensors:
        lines.extend(
            f"    {t['name']:48s} {t['type']:6s} {t['shape']!s:16s} {t['bytes']}"
            for t in info["tensors"]
        )
    return "\n".join(lines)
