"""LLaMA family: ``LlamaForCausalLM`` -> ``llama``.

Two vocabularies: sentencepiece BPE with byte fallback (LLaMA-1/2, Vicuna, Chimera; from
``tokenizer.model`` or ``tokenizer.json``) and GPT-2-style byte-level BPE (Llama 3, SmolLM and
most LLaMA-architecture checkpoints since 2024; ``tokenizer.json`` without byte fallback), the
latter written as upstream's ``gpt2`` vocabulary with the pre-tokenizer ``vocab_bpe`` chooses.

Hugging Face stores q/k projections for the "rotate half" rotary layout; llama.cpp rotates
adjacent pairs, so the rows of each head of q and k are interleaved back (the permutation the
original LLaMA -> HF script undid). That is a pure row reordering, done while streaming.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ggufkit.convert.base import ModelConverter, TensorPlan, register
from ggufkit.convert.vocab_bpe import build_bpe_vocab, write_bpe_vocab
from ggufkit.convert.vocab_spm import add_space_prefix, set_llama_vocab
from ggufkit.core.errors import ConfigError, NativeUnsupportedError, TokenizerError, UsageError
from ggufkit.core.fsutil import read_json

T = gguf.MODEL_TENSOR


def rotary_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row order taking HF's rotate-half layout to llama.cpp's interleaved pairs, per head."""
    head_dim = n_rows // n_head
    return np.arange(n_rows).reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


ROPE_TYPES = ("default", "linear", "yarn", "llama3", "dynamic")
YARN_EXTRAS = ("extrapolation_factor", "attention_factor", "attn_factor", "beta_fast", "beta_slow")
# Upstream writes add_bos_token = false for a LLaMA whose vocab has this size (Granite's small
# models; SmolLM's vocab has it too), whatever the tokenizer says.
NO_BOS_VOCAB_SIZE = 49152


def rope_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from transformers 5's ``rope_parameters`` or the older keys."""
    params = config.get("rope_parameters") or {}
    legacy = config.get("rope_scaling") or {}
    merged = {**legacy, **params} if isinstance(params, dict) and isinstance(legacy, dict) else {}
    merged.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type")) or "default"
    merged["rope_type"] = str(kind).lower()
    return merged


# A tiktoken rank file (what Llama 3 ships as tokenizer.model, and derivatives copy beside their
# tokenizer.json) is lines of base64 token bytes and a rank; a sentencepiece model is a protobuf.
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+\r?\n")


def is_sentencepiece_model(path: Path) -> bool:
    """Whether ``path`` (a tokenizer.model) is a sentencepiece model, not a tiktoken rank file."""
    with open(path, "rb") as handle:
        return _TIKTOKEN_LINE.match(handle.read(256)) is None


def read_vocab(model_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """The vocabulary's kind and tokenizer.json as parsed (None where it was not needed).

    The kind is "spm" (a sentencepiece tokenizer.model, or neither file: set_llama_vocab says
    what is missing), "spm-json" (a sentencepiece-style tokenizer.json: BPE with byte fallback)
    or "bpe" (byte-level BPE; also where tokenizer.model is tiktoken's, as Llama 3's is).

    Raises NativeUnsupportedError for vocabularies only upstream reads (e.g. Mistral's
    tekken.json, a Unigram or WordPiece tokenizer.json)."""
    model_file = model_dir / "tokenizer.model"
    tiktoken = model_file.is_file() and not is_sentencepiece_model(model_file)
    if model_file.is_file() and not tiktoken:
        return "spm", None
    json_file = model_dir / "tokenizer.json"
    if not json_file.is_file():
        if tiktoken:
            raise NativeUnsupportedError(
                f"{model_file} is a tiktoken vocabulary and {model_dir} has no tokenizer.json"
            )
        if (model_dir / "tekken.json").is_file():
            raise NativeUnsupportedError(f"{model_dir} has a Mistral tekken.json vocabulary")
        return "spm", None
    data = read_json(json_file, TokenizerError)
    model = data.get("model") if isinstance(data, dict) else None
    found = model.get("type") if isinstance(model, dict) else None
    if found != "BPE" or not isinstance(model, dict):
        raise NativeUnsupportedError(
            f"{json_file} holds a {found or 'unknown'} model; the native LLaMA converter reads "
            "BPE vocabularies (sentencepiece-style or byte-level)"
        )
    if model.get("byte_fallback") and tiktoken:
        raise NativeUnsupportedError(
            f"{json_file} is sentencepiece-style but {model_file} is a tiktoken vocabulary"
        )
    return ("spm-json" if model.get("byte_fallback") else "bpe"), data


@register("LlamaForCausalLM", "LLaMAForCausalLM")
class LlamaConverter(ModelConverter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    accepts_pre_tokenizer = True  # byte-level BPE vocabularies; set_vocab refuses it otherwise

    @classmethod
    def check_native(cls, model_dir: Path, config: dict[str, Any]) -> None:
        rope = rope_settings(config)
        kind = rope["rope_type"]
        if kind not in ROPE_TYPES:
            raise NativeUnsupportedError(
                f"{model_dir / 'config.json'}: rope type {kind!r} is not implemented natively "
                f"(native: {', '.join(ROPE_TYPES)})"
            )
        tuned = [key for key in YARN_EXTRAS if kind == "yarn" and rope.get(key) is not None]
        if tuned:
            raise NativeUnsupportedError(
                f"{model_dir / 'config.json'}: YaRN's {', '.join(tuned)} are not written natively"
            )
        for key, what in (
            ("quantization_config", "a pre-quantized checkpoint"),
            ("draft_vocab_size", "an EAGLE-3 draft model"),
            ("num_local_experts", "a mixture of experts"),
        ):
            if config.get(key) is not None:
                raise NativeUnsupportedError(
                    f"{model_dir / 'config.json'} sets {key}: {what} is not converted natively"
                )
        read_vocab(model_dir)

    def read_config(self) -> None:
        # tokenizer.json is parsed once here and handed to the vocabulary's writers
        self.vocab_kind, self.tokenizer_json = read_vocab(self.model_dir)
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
        return rope_settings(self.config)

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
        elif kind not in ROPE_TYPES:
            self.check_native(self.model_dir, self.config)  # raises NativeUnsupportedError

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        if self.vocab_kind != "bpe":
            if self.pre_tokenizer is not None:
                raise UsageError(
                    f"`pre_tokenizer` applies to byte-level BPE vocabularies; {self.model_dir} "
                    "has a sentencepiece one",
                    hint="leave `pre_tokenizer` out",
                )
            self.notes.extend(
                set_llama_vocab(writer, self.model_dir, self.vocab_size, self.tokenizer_json)
            )
            return
        # Upstream's order for a LLaMA: add_prefix_space, then its GPT-2 vocabulary.
        add_space_prefix(writer, self.model_dir)
        vocab = build_bpe_vocab(
            self.model_dir,
            vocab_size=self.vocab_size,
            pre_tokenizer=self.pre_tokenizer,
            tokenizer_json=self.tokenizer_json,
        )
        write_bpe_vocab(writer, self.model_dir, vocab)
        if self.vocab_size == NO_BOS_VOCAB_SIZE:
            kv = writer.kv_data[0]
            key = gguf.Keys.Tokenizer.ADD_BOS
            if key in kv:
                kv[key].value = False  # in place, where upstream overwrites it
            else:
                writer.add_add_bos_token(False)
        self.notes.append(f"vocab: {len(vocab.tokens)} tokens, byte-level BPE from tokenizer.json")
        self.notes.extend(vocab.notes)

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
