"""``pytorch_model*.bin`` checkpoints, read through ``torch.load(weights_only=True, mmap=True)``
only (never plain pickle), for :class:`ggufkit.formats.safetensors.Checkpoint`, which builds its
tensor descriptions from what is here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import InputError, ToolMissingError

_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def load_bin(file: Path) -> dict[str, Any]:
    """The state dict of ``file``, memory-mapped where the file allows it."""
    try:
        import torch
    except ImportError as exc:
        raise ToolMissingError(
            f"{file.name} is a PyTorch checkpoint and torch is not installed",
            hint="pip install 'ggufkit[torch]' (or convert the checkpoint to safetensors)",
        ) from exc
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (non-zip) .bin files cannot be memory-mapped; still weights-only.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot load {file} safely: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            hint="ggufkit loads .bin files with weights_only=True only; convert untrusted pickles "
            "to safetensors in a sandbox first",
            path=file,
        ) from exc
    if not isinstance(state, dict):
        raise InputError(f"{file} does not hold a state dict", path=file)
    return state


def tensor_types(file: Path, state: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's safetensors dtype code and shape. A tensor whose data would not fit in the
    file (a view with zero strides: a few bytes that claim terabytes) is refused here, before
    anything makes it contiguous."""
    types = {}
    file_size = file.stat().st_size
    for name, tensor in state.items():
        if hasattr(tensor, "numel") and tensor.numel() * tensor.element_size() > file_size:
            raise InputError(
                f"tensor {name!r} in {file.name} claims {tensor.numel() * tensor.element_size()} "
                f"bytes of data, more than the file's {file_size}",
                hint="the file is corrupt or crafted: fetch it again from its source",
                path=file,
            )
        if not hasattr(tensor, "dtype"):
            continue
        dtype = _DTYPES.get(str(tensor.dtype).removeprefix("torch."))
        if dtype is None:
            raise InputError(
                f"tensor {name!r} in {file.name} has unsupported dtype {tensor.dtype}",
                path=file,
            )
        types[name] = (dtype, tuple(int(d) for d in tensor.shape))
    return types


def tensor_array(tensor: Any) -> np.ndarray:
    """A torch tensor as numpy, BF16 as uint16 bits."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
    return tensor.contiguous().numpy()
