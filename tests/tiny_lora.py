"""LoRA adapters trained in the tests: a few seeded steps of PEFT training on a tiny base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = (
    "The lighthouse keeper wound the clock at dusk and counted the ships that passed the reef. "
    "Every night the lamp turned, and every morning the gulls came back to the rocks. "
)


def train_lora(
    base_dir: Path,
    out_dir: Path,
    *,
    steps: int = 4,
    seed: int = 0,
    lr: float = 0.05,
    resize_to: int | None = None,
    **config: Any,
) -> Path:
    """Train a LoRA adapter on ``base_dir`` for ``steps`` steps and save it to ``out_dir``.

    ``config``: LoraConfig fields (r, lora_alpha, target_modules, use_rslora, rank_pattern, ...).
    B starts at zero in PEFT, so the steps are what make the adapter do something; the B
    matrices are then nudged (seeded) so that every targeted weight changes measurably.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if any(base_dir.glob("tokenizer*")):
        ids = torch.tensor([AutoTokenizer.from_pretrained(str(base_dir))(TEXT)["input_ids"][:64]])
    else:  # a checkpoint without a tokenizer: seeded token ids
        ids = torch.randint(
            3, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(seed)
        )
    if resize_to is not None:
        model.resize_token_embeddings(resize_to)
    settings: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    settings.update(config)
    peft_model = get_peft_model(model, LoraConfig(**settings))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def peft_logits(base_dir: Path, adapter_dir: Path, ids: list[int], *, merged: bool = False) -> Any:
    """PEFT's logits (float32 numpy, positions x vocab): the adapter applied, or merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    run = peft_model.merge_and_unload() if merged else peft_model
    run.eval()
    with torch.no_grad():
        return run(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def merged_state(
    base_dir: Path, adapter_dir: Path, dtype: str = "float32", resize_to: int | None = None
) -> dict[str, Any]:
    """PEFT's merge_and_unload() state dict, in the base loaded as ``dtype``, as numpy float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=getattr(torch, dtype))
    if resize_to is not None:
        model.resize_token_embeddings(resize_to)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {name: t.float().numpy() for name, t in merged.state_dict().items()}


def _llama_logits_here(model: str, ids: list[int], lora: str | None) -> Any:
    import numpy as np

    from ggufkit.llamacpp.bindings import load_llama_cpp

    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(
        model_path=model, lora_path=lora, n_ctx=128, logits_all=True, seed=0, verbose=False
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def llama_logits(model: Path, ids: list[int], lora: Path | None = None) -> Any:
    """llama.cpp's logits (a child process), with a LoRA GGUF applied at run time if given."""
    from ggufkit.formats.gguf_lora import check_lora_fits
    from ggufkit.llamacpp.isolate import run_isolated

    if lora is not None:
        check_lora_fits(model, lora)
    return run_isolated(
        _llama_logits_here, str(model), ids, str(lora) if lora else None, what="llama.cpp"
    )
