"""Whether a llama.cpp LoRA GGUF fits a model GGUF, checked from both headers before loading.

llama.cpp refuses an adapter whose tensors its model lacks or whose shapes differ (e.g. a LoRA on
an lm_head the model ties to its embeddings: "LoRA tensor 'output.weight' does not exist in base
model"), and llama-cpp-python 0.3.36 then dereferences the NULL it gets back (it tests the pointer
with ``is None``): the process dies. Every caller checks here first.
"""

from __future__ import annotations

from pathlib import Path

from ggufkit.core.errors import AdapterError
from ggufkit.formats.gguf_reader import check_gguf

_HINT = "convert the adapter against this model's base: `ggufkit convert-lora ADAPTER --base BASE`"


def check_lora_fits(model: str | Path, lora: str | Path) -> float:
    """AdapterError unless every ``X.lora_a``/``X.lora_b`` pair of ``lora`` matches a tensor ``X``
    of ``model`` (same architecture, ``b @ a`` of X's shape); returns the adapter's alpha."""
    model, lora = Path(model), Path(lora)
    adapter = check_gguf(lora)
    if adapter.metadata.get("general.type") != "adapter" or (
        adapter.metadata.get("adapter.type") != "lora"
    ):
        raise AdapterError(
            f"{lora} is not a llama.cpp LoRA adapter (general.type "
            f"{adapter.metadata.get('general.type')!r})",
            hint="give the file `ggufkit convert-lora` wrote",
            path=lora,
        )
    base = check_gguf(model)
    arch, base_arch = (
        adapter.metadata.get("general.architecture"),
        base.metadata.get("general.architecture"),
    )
    if arch != base_arch:
        raise AdapterError(
            f"the adapter {lora} is for {arch!r} models, {model} is {base_arch!r}",
            hint=_HINT,
            path=lora,
        )
    shapes = {t.name: t.shape for t in base.tensors}
    halves = {t.name: t.shape for t in adapter.tensors}
    for name, a_shape in halves.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b_shape = halves.get(target + ".lora_b")
        if target not in shapes:
            raise AdapterError(
                f"the adapter {lora} changes {target}, which {model} does not have"
                + (" (its output is tied to the embeddings)" if target == "output.weight" else ""),
                hint=_HINT,
                path=lora,
            )
        if b_shape is None or len(a_shape) != 2 or len(b_shape) != 2:
            raise AdapterError(f"{lora}: {target} lacks its lora_b", hint=_HINT, path=lora)
        # llama.cpp's own checks (llama-adapter.cpp), in ggml order (row length first)
        n_in, n_out = shapes[target][0], shapes[target][1] if len(shapes[target]) > 1 else 1
        if target.endswith("token_embd.weight"):  # a and b flipped: see llm_build_inp_embd
            fits = (n_in, n_out) == (b_shape[1], a_shape[1])
        else:
            fits = (n_in, n_out) == (a_shape[0], b_shape[1]) and a_shape[1] == b_shape[0]
        if not fits:
            raise AdapterError(
                f"the adapter {lora} does not fit {model}: {target} is {list(shapes[target])}, "
                f"its lora_a {list(a_shape)} and lora_b {list(b_shape)}",
                hint=_HINT,
                path=lora,
            )
    alpha = adapter.metadata.get("adapter.lora.alpha", 0.0)
    return float(alpha) if isinstance(alpha, int | float) else 0.0
