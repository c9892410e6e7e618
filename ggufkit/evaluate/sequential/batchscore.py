"""One llama.cpp context set up as ``llama-perplexity`` sets up its own, for the in-process scorer.

``llama-perplexity`` is the yardstick for ``eval --target-error``: the same numbers on the same
chunks, at the same speed per token. So this context copies its set-up: ``n_seq = n_batch /
ctx`` chunks decoded side by side as separate sequences in one batch (``n_batch`` 2048,
``n_ubatch`` 512, the KV cache split per sequence), logits requested only for the positions
that are scored, the same thread count, and the same flash-attention setting
(:mod:`ggufkit.llamacpp.attention`), which changes the numbers, not only the speed. Logits are
turned into log-probabilities in float32 with float64 sums, as llama-perplexity does.

Only for use inside a spawned child (:func:`ggufkit.llamacpp.isolate.run_isolated`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ggufkit.core.errors import EvaluationError
from ggufkit.llamacpp.attention import flash_attn_type
from ggufkit.llamacpp.device import gpu_layers

N_BATCH = 2048  # llama-perplexity's defaults (common_params)
N_UBATCH = 512


def default_threads() -> int:
    """llama.cpp's default thread count for math (``common_cpu_get_num_math``): the physical
    cores, else the logical CPUs; passed to llama-perplexity and to the scorer alike."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except (ImportError, OSError):  # pragma: no cover - psutil is a dependency
        physical = None
    return max(1, physical or os.cpu_count() or 1)


def seqs_per_batch(ctx: int) -> int:
    """Chunks per batch: llama-perplexity's ``n_seq = max(1, n_batch / n_ctx)``."""
    return max(1, N_BATCH // ctx)


class ChunkScorer:
    """A model and a context that decode up to :func:`seqs_per_batch` chunks at a time."""

    def __init__(self, model: str, ctx: int, threads: int | None) -> None:
        from ggufkit.llamacpp.bindings import load_llama_cpp

        self.lib = lib = load_llama_cpp()
        self.ctx = ctx
        self.n_seq = seqs_per_batch(ctx)
        self.first = ctx // 2  # positions first .. ctx-2 predict the scored tokens
        self.n_out = ctx - 1 - self.first
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers()
        self.model = lib.llama_model_load_from_file(model.encode(), mparams)
        if not self.model:
            raise EvaluationError(
                f"llama.cpp could not load {model}", hint="check it with `ggufkit inspect`"
            )
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.n_seq * ctx
        # llama-perplexity's n_batch is min(2048, n_seq * ctx); past 2048 it decodes a chunk in
        # several calls. One call of the whole chunk computes the same: n_ubatch (512) splits it.
        cparams.n_batch = self.n_seq * ctx
        cparams.n_ubatch = min(N_UBATCH, cparams.n_batch)
        cparams.n_seq_max = self.n_seq
        cparams.kv_unified = False
        cparams.flash_attn_type = flash_attn_type()
        cparams.n_threads = cparams.n_threads_batch = threads or default_threads()
        self.context = lib.llama_init_from_model(self.model, cparams)
        if not self.context:
            lib.llama_model_free(self.model)
            raise EvaluationError(
                f"llama.cpp could not make a context of {cparams.n_ctx} tokens for {model}",
                hint="lower --ctx",
            )
        vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        self.batch = lib.llama_batch_init(self.n_seq * ctx, 0, 1)
        self._batch_views()

    def _batch_views(self) -> None:
        size = self.n_seq * self.ctx
        batch = self.batch
        self.tokens = np.ctypeslib.as_array(batch.token, shape=(size,))
        self.pos = np.ctypeslib.as_array(batch.pos, shape=(size,))
        self.n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(size,))
        self.wants = np.ctypeslib.as_array(
            ctypes.cast(batch.logits, ctypes.POINTER(ctypes.c_int8)), shape=(size,)
        )
        self.n_seq_id[:] = 1
        positions = np.arange(self.ctx, dtype=np.int32)
        self.pos[:] = np.tile(positions, self.n_seq)
        scored = (positions >= self.first) & (positions < self.ctx - 1)
        self.wants[:] = np.tile(scored, self.n_seq)
        for i in range(size):
            batch.seq_id[i][0] = i // self.ctx

    def logits(self, chunks: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per chunk, the float32 logits of the scored positions (``ctx - 1 - ctx/2`` rows)."""
        lib = self.lib
        out: list[np.ndarray] = []
        for start in range(0, len(chunks), self.n_seq):
            group = chunks[start : start + self.n_seq]
            n_tokens = len(group) * self.ctx
            self.tokens[:n_tokens] = np.asarray(group, dtype=np.int32).reshape(-1)
            self.batch.n_tokens = n_tokens
            lib.llama_memory_clear(lib.llama_get_memory(self.context), True)
            if lib.llama_decode(self.context, self.batch) != 0:
                raise EvaluationError(
                    f"llama.cpp failed to decode {len(group)} chunk(s) of {self.ctx} tokens",
                    hint="lower --ctx, or run the default eval (llama-perplexity)",
                )
            rows = len(group) * self.n_out
            pointer = lib.llama_get_logits(self.context)
            flat = np.ctypeslib.as_array(pointer, shape=(rows, self.n_vocab))
            out.extend(
                flat[i * self.n_out : (i + 1) * self.n_out].copy() for i in range(len(group))
            )
        return out

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.context:
            self.lib.llama_free(self.context)
            self.context = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None


# --- the arithmetic, as llama-perplexity does it -----------------------------------------------


def _softmax_terms(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest logit (float32) and log(sum(exp(logit - max))) (float32 of a f64 sum)."""
    top = logits.max(axis=1)
    exps = np.exp(logits - top[:, None])
    log_sum = np.log(exps.sum(axis=1, dtype=np.float64)).astype(np.float32)
    return top, log_sum


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood of ``targets``."""
    top, log_sum = _softmax_terms(logits)
    return (top + log_sum - logits[np.arange(len(targets)), targets]).astype(np.float64)


def base_record(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """The baseline's mean NLL and its log-probabilities in 16 bits, as llama-perplexity's
    ``--kl-divergence-base`` file keeps them: codes over ``[max - 16, max]``, a scale, an offset."""
    top, log_sum = _softmax_terms(logits)
    nlls = top + log_sum - logits[np.arange(len(targets)), targets]
    low = np.maximum(logits.min(axis=1), top - np.float32(16))
    scale = (top - low) / np.float32(65535)
    inv = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    codes = np.rint((logits - low[:, None]) * inv[:, None])
    codes = np.where(logits > low[:, None], codes, 0).astype(np.uint16)
    return {
        "nll": np.float64(nlls.astype(np.float64).mean()),
        "codes": codes,
        "scale": scale,
        "low": (low - top - log_sum).astype(np.float32),
    }


def type_values(
    logits: np.ndarray, targets: np.ndarray, base: dict[str, np.ndarray]
) -> dict[str, float]:
    """Mean NLL, mean KL-divergence from the packed baseline and top-1 agreement of one chunk.

    Baseline terms below e^-16 are dropped; the baseline's top token is the first of its largest
    codes (llama-perplexity's rules)."""
    top, log_sum = _softmax_terms(logits)
    rows = np.arange(len(targets))
    nlls = (top + log_sum - logits[rows, targets]).astype(np.float64)
    base_lp = base["scale"][:, None].astype(np.float32) * base["codes"] + base["low"][:, None]
    base_lp = base_lp.astype(np.float32)
    weights = np.where(base_lp > -16, np.exp(base_lp), np.float32(0))
    log_probs = logits - (top + log_sum)[:, None]
    kld = (weights * (base_lp - log_probs)).sum(axis=1, dtype=np.float64)
    same = logits.argmax(axis=1) == base["codes"].argmax(axis=1)
    return {"nll": float(nlls.mean()), "kld": float(kld.mean()), "top1": float(same.mean())}
