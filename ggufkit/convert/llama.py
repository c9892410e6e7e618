"""LLaMA family (LLaMA-1/2, Vicuna, Chimera, StableVicuna ...): ``LlamaForCausalLM`` -> ``llama``.

Hugging Face stores q/k projections for the "rotate half" rotary layout; llama.cpp rotates
adjacent pairs, so the rows of each head of q and k are interleaved back (the permutation the
original LLaMA -> HF script undid). That is a pure row reordering, done while streaming.
"""

from __future__ import annotations

import math
from typing import Any

import gguf
import numpy as np

from ggufkit.convert.base import ModelConverter, TensorPlan, register
from ggufkit.convert.vocab_spm import set_llama_vocab
from ggufkit.core.errors import ConfigError, ConversionError

T = gguf.MODEL_TENSOR


def rotary_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row order taking HF's rotate-half layout to llama.cpp's interleaved pairs, per head."""
    head_dim = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


@register("LlamaForCausalLM", "LLaMAForCausalLM")
class LlamaConverter(ModelConverter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def read_config(self) -> None:
        self.n_embd = self.hparam("hidden_size")
        self.n_head = self.hparam("num_attention_heads")
        self.n_head_kv = self.hparam_or("num_key_value_heads", default=self.n_head)
        self.n_ff = self.hparam("intermediate_size")
        self.vocab_size = self.hparam("vocab_size")
        self.head_dim = self.hparam_or("head_dim", default=None) or self.n_embd // self.n_head
        self.tied = bool(self.hparam_or("tie_word_embeddings", default=False))
        if self.n_head <= 0 or self.n_head_kv <= 0 or self.n_head % self.n_head_kv:
            raise ConfigError(
                f"{self.config_path}: {self.n_head} attention heads cannot share "
                f"{self.n_head_kv} key/value heads",
                path=self.config_path,
            )
        if self.head_dim % 2 or (
            "head_dim" not in self.config and self.n_embd != self.head_dim * self.n_head
        ):
            raise ConfigError(
                f"{self.config_path}: hidden_size {self.n_embd} does not split into "
                f"{self.n_head} heads of even size",
                path=self.config_path,
            )

    # --- rotary configuration ----------------------------------------------------------------

    def rope(self) -> dict[str, Any]:
        """Rope settings from transformers 5's ``rope_parameters`` or the older keys."""
        params = dict(self.config.get("rope_parameters") or {})
        legacy = self.config.get("rope_scaling") or {}
        merged = {**legacy, **params}
        merged.setdefault("rope_theta", self.config.get("rope_theta", 10000.0))
        kind = merged.get("rope_type", merged.get("type")) or "default"
        merged["rope_type"] = str(kind).lower()
        return merged

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        writer.add_vocab_size(self.vocab_size)
        writer.add_block_count(self.block_count)
        n_ctx = self.hparam_or("max_position_embeddings", "max_sequence_length")
        if n_ctx is not None:
            writer.add_context_length(int(n_ctx))
        writer.add_embedding_length(self.n_embd)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(self.hparam_or("rms_norm_eps", default=1e-6)))
        writer.add_rope_dimension_count(self.head_dim)
        if "head_dim" in self.config:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        rope = self.rope()
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        kind, factor = rope["rope_type"], rope.get("factor")
        if kind == "linear" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(factor))
        elif kind == "yarn" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(factor))
            original = rope.get("original_max_position_embeddings")
            if original is not None:
                writer.add_rope_scaling_orig_ctx_len(int(original))
        elif kind not in ("default", "llama3", "dynamic"):
            raise ConversionError(
                f"{self.config_path}: rope type {kind!r} is not supported for LLaMA",
                hint="try --engine upstream",
                path=self.config_path,
            )

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        self.notes.extend(set_llama_vocab(writer, self.model_dir, self.vocab_size))

    # --- tensors -----------------------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        n_embd, q_rows, kv_rows = (
            self.n_embd,
            self.n_head * self.head_dim,
            self.n_head_kv * self.head_dim,
        )

        def name(kind: T, bid: int | None = None) -> str:
            base = gguf.TENSOR_NAMES[kind]
            return (base.format(bid=bid) if bid is not None else base) + ".weight"

        shapes: dict[str, tuple[int, ...]] = {
            name(T.TOKEN_EMBD): (self.vocab_size, n_embd),
            name(T.OUTPUT_NORM): (n_embd,),
            name(T.OUTPUT): (self.vocab_size, n_embd),
        }
        for bid in range(self.block_count):
            shapes[name(T.ATTN_NORM, bid)] = (n_embd,)
            shapes[name(T.ATTN_Q, bid)] = (q_rows, n_embd)
            shapes[name(T.ATTN_K, bid)] = (kv_rows, n_embd)
            shapes[name(T.ATTN_V, bid)] = (kv_rows, n_embd)
            shapes[name(T.ATTN_OUT, bid)] = (n_embd, q_rows)
            shapes[name(T.FFN_NORM, bid)] = (n_embd,)
            shapes[name(T.FFN_GATE, bid)] = (self.n_ff, n_embd)
            shapes[name(T.FFN_UP, bid)] = (self.n_ff, n_embd)
            shapes[name(T.FFN_DOWN, bid)] = (n_embd, self.n_ff)
        return shapes

    def optional_tensors(self) -> set[str]:
        return {gguf.TENSOR_NAMES[T.OUTPUT] + ".weight"} if self.tied else set()

    def row_order(self, hf_name: str, gguf_name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return rotary_row_order(shape[0], self.n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return rotary_row_order(shape[0], self.n_head_kv)
        return None

    def plan_tensors(self) -> list[TensorPlan]:
        plans = super().plan_tensors()
        rope = self.rope()
        if rope["rope_type"] == "llama3":
            plans.insert(0, self._rope_freqs_plan(rope))
        return plans

    def _rope_freqs_plan(self, rope: dict[str, Any]) -> TensorPlan:
        """Llama-3.1-style per-frequency scaling factors, a small tensor llama.cpp reads."""
        dim, base = self.head_dim, float(rope["rope_theta"])
        factor = float(rope.get("factor", 8.0))
        low, high = (
            float(rope.get("low_freq_factor", 1.0)),
            float(rope.get("high_freq_factor", 4.0)),
        )
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        wavelen = 2 * math.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        factors = np.where(
            wavelen < old_ctx / high,
            1.0,
            np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)),
        ).astype(np.float32)
        name = gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight"
        return TensorPlan(name, factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors, 0)
