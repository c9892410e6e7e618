"""Proof that a GGUF file behaves like its checkpoint: logits and tokenization, side by side.

``logit_parity`` evaluates the same token ids with transformers (fp32) and with llama.cpp (our
build, through ``llama_cpp``) and compares every position; ``tokenizer_parity`` tokenizes a text
with both. Both need the [torch] extra and ``ggufkit build``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggufkit.core.errors import EvaluationError, ToolMissingError
from ggufkit.llamacpp.attention import resolved_flash_attn
from ggufkit.llamacpp.device import gpu_layers


@dataclass
class ParityReport:
    """llama.cpp logits vs the reference's, over ``n_positions`` positions."""

    n_positions: int
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float  # of the reference
    ref_argmax: list[int] = field(repr=False)
    gguf_argmax: list[int] = field(repr=False)
    ref_margin: list[float] = field(repr=False)  # top-1 minus top-2 logit of the reference

    @property
    def rel_diff(self) -> float:
        """max |Δlogit| as a fraction of the largest reference |logit|."""
        return self.max_abs_diff / self.max_abs_logit if self.max_abs_logit else 0.0

    @property
    def argmax_agreement(self) -> float:
        same = sum(a == b for a, b in zip(self.ref_argmax, self.gguf_argmax, strict=True))
        return same / self.n_positions if self.n_positions else 1.0

    def decisive_mismatches(self, margin: float | None = None) -> list[int]:
        """Positions whose argmax differs although the reference's top-2 margin exceeds ``margin``
        (by default the largest difference seen: a difference that small cannot flip it)."""
        margin = self.max_abs_diff if margin is None else margin
        return [
            i
            for i, (a, b, m) in enumerate(
                zip(self.ref_argmax, self.gguf_argmax, self.ref_margin, strict=True)
            )
            if a != b and m > margin
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_positions": self.n_positions,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "rel_diff": self.rel_diff,
            "argmax_agreement": self.argmax_agreement,
            "decisive_mismatches": self.decisive_mismatches(),
        }

    def summary(self) -> str:
        return (
            f"{self.n_positions} positions: max |Δlogit| {self.max_abs_diff:.4g} "
            f"({100 * self.rel_diff:.3f}% of max |logit| {self.max_abs_logit:.3g}), "
            f"argmax agreement {100 * self.argmax_agreement:.1f}%"
        )


@dataclass
class TokenizerReport:
    n_reference: int
    n_gguf: int
    first_mismatch: int | None  # index into the id lists, None when equal
    reference_ids: list[int] = field(repr=False)
    gguf_ids: list[int] = field(repr=False)

    @property
    def equal(self) -> bool:
        return self.first_mismatch is None

    def summary(self) -> str:
        if self.equal:
            return f"identical: {self.n_reference} tokens"
        i = self.first_mismatch or 0
        return (
            f"differ at token {i}: reference {self.reference_ids[i : i + 6]} vs "
            f"gguf {self.gguf_ids[i : i + 6]} ({self.n_reference} vs {self.n_gguf} tokens)"
        )


def _import_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ToolMissingError(
            "parity checks need torch and transformers", hint="pip install 'ggufkit[torch]'"
        ) from exc
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in our output
    return torch, transformers


@contextlib.contextmanager
def open_gguf(
    gguf_path: str | Path,
    *,
    n_ctx: int = 512,
    vocab_only: bool = False,
    n_threads: int | None = None,
    lora: str | Path | None = None,
    n_batch: int | None = None,
    logits_all: bool | None = None,
) -> Iterator[Any]:
    """A ``llama_cpp.Llama`` on our build (with a LoRA GGUF applied: check it first with
    ``formats.gguf_lora.check_lora_fits``), closed afterwards. ``n_batch`` defaults to
    ``n_ctx``; ``logits_all`` (llama-cpp-python's score array for every position) to True
    unless ``vocab_only``."""
    from ggufkit.llamacpp.bindings import load_llama_cpp

    llama_cpp = load_llama_cpp()
    try:
        llm = llama_cpp.Llama(
            model_path=str(gguf_path),
            lora_path=str(lora) if lora is not None else None,
            n_ctx=n_ctx,
            n_batch=n_batch or n_ctx,
            n_ubatch=n_batch or n_ctx,
            logits_all=not vocab_only if logits_all is None else logits_all,
            vocab_only=vocab_only,
            seed=0,
            n_threads=n_threads or os.cpu_count() or 1,
            n_threads_batch=n_threads or os.cpu_count() or 1,
            n_gpu_layers=gpu_layers(),  # the same backend as the tools (-ngl)
            flash_attn=resolved_flash_attn() == "on",  # the same kernel as the tools (-fa)
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise EvaluationError(f"llama.cpp cannot load {gguf_path}: {exc}", path=gguf_path) from exc
    try:
        yield llm
    finally:
        llm.close()


def reference_logits(
    hf_dir: str | Path, ids: Sequence[int], adapter: str | Path | None = None
) -> np.ndarray:
    """transformers' fp32 logits; with ``adapter`` (a PEFT LoRA directory), PEFT's, unmerged."""
    torch, transformers = _import_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if adapter is not None:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ToolMissingError(
                "comparing with a LoRA adapter needs peft", hint="pip install 'ggufkit[torch]'"
            ) from exc
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)], dtype=torch.long)).logits[0]
    return np.asarray(logits.float().numpy(), dtype=np.float32)


def gguf_logits_here(
    gguf_path: str | Path, ids: Sequence[int], lora: str | None = None
) -> np.ndarray:
    """llama.cpp's logits for ``ids`` in this process (a crash here ends the process)."""
    n_ctx = max(64, -(-len(ids) // 64) * 64)
    with open_gguf(gguf_path, n_ctx=n_ctx, lora=lora) as llm:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)


def gguf_logits(
    gguf_path: str | Path, ids: Sequence[int], lora: str | Path | None = None
) -> np.ndarray:
    """llama.cpp's logits for ``ids`` (with a LoRA GGUF applied at run time), computed in a child
    process: a crashing kernel becomes a ToolCrashedError naming the signal instead of taking
    this process down. An adapter that does not fit is refused before llama.cpp loads it."""
    from ggufkit.formats.gguf_lora import check_lora_fits
    from ggufkit.llamacpp.isolate import run_isolated

    if lora is not None:
        check_lora_fits(gguf_path, lora)
    return run_isolated(
        gguf_logits_here,
        str(gguf_path),
        [int(i) for i in ids],
        str(lora) if lora is not None else None,
        what=f"llama.cpp evaluating {Path(gguf_path).name}",
    )


def compare_logits(ref: np.ndarray, got: np.ndarray) -> ParityReport:
    if ref.shape != got.shape:
        raise EvaluationError(
            f"logit shapes differ: reference {ref.shape}, gguf {got.shape}",
            hint="the GGUF's vocabulary size does not match the model's",
        )
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    top2 = np.sort(ref, axis=-1)[:, -2:]
    return ParityReport(
        n_positions=int(ref.shape[0]),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_abs_logit=float(np.abs(ref).max()),
        ref_argmax=[int(i) for i in ref.argmax(axis=-1)],
        gguf_argmax=[int(i) for i in got.argmax(axis=-1)],
        ref_margin=[float(m) for m in top2[:, 1] - top2[:, 0]],
    )


def logit_parity(
    gguf_path: str | Path,
    hf_dir: str | Path,
    ids: Sequence[int],
    *,
    lora: str | Path | None = None,
    adapter: str | Path | None = None,
) -> ParityReport:
    """llama.cpp's logits for ``ids`` (``lora``: a LoRA GGUF applied) vs transformers' fp32
    logits (``adapter``: with a PEFT adapter), at every position."""
    reference = reference_logits(hf_dir, ids, adapter)
    return compare_logits(reference, gguf_logits(gguf_path, ids, lora))


def hf_token_ids(hf_dir: str | Path, text: str) -> list[int]:
    """The reference tokenizer's ids for ``text``, special tokens added as it is configured to."""
    _, transformers = _import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    return [int(i) for i in tokenizer(text)["input_ids"]]


def tokenizer_parity(gguf_path: str | Path, hf_dir: str | Path, text: str) -> TokenizerReport:
    """llama.cpp's tokenization of ``text`` vs the HF tokenizer's.

    Special tokens in the text are parsed, and BOS/EOS are added as each side's configuration
    says, so the GGUF's add_bos/add_eos flags are checked too.
    """
    reference = hf_token_ids(hf_dir, text)
    from ggufkit.llamacpp.bindings import vocab_only

    with vocab_only(gguf_path) as vocab:
        ids = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    first = next(
        (i for i, (a, b) in enumerate(zip(reference, ids, strict=False)) if a != b),
        None if len(reference) == len(ids) else min(len(reference), len(ids)),
    )
    return TokenizerReport(len(reference), len(ids), first, reference, ids)
