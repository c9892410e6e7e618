"""BLOOM family (BLOOM, BLOOMZ, Phoenix, ...): ``BloomForCausalLM`` -> llama.cpp's ``bloom``.

What differs from a LLaMA: the attention projection is one fused ``query_key_value`` whose rows
are grouped per head as [q, k, v] while llama.cpp wants [all q; all k; all v] (a row permutation
of the weight and of its bias); a layer norm right after the embedding; biases everywhere; ALiBi
instead of RoPE (llama.cpp fixes its max bias at 8, so there is nothing to write); and the output
projection tied to the embedding. The vocabulary is byte-level BPE (see ``vocab_bpe``), padded to
the embedding's rows when the tokenizer is shorter (BLOOMZ/Phoenix: 250,680 tokens, 250,880 rows).
"""

from __future__ import annotations

from typing import ClassVar

import gguf
import numpy as np

from ggufkit.convert.base import ModelConverter, register
from ggufkit.convert.vocab_bpe import build_bpe_vocab, write_bpe_vocab
from ggufkit.core.errors import ConfigError, ConversionError
from ggufkit.core.log import get_logger

log = get_logger(__name__)

# BLOOM was trained on 2,048-token sequences; ALiBi has no table sized by it, so a config that
# names no length gets this instead of a guess derived from the width (upstream uses n_embed).
BLOOM_TRAINING_CONTEXT = 2048
CONTEXT_KEYS = ("seq_length", "n_positions", "max_position_embeddings", "max_sequence_length")


def qkv_row_order(n_head: int, head_dim: int) -> np.ndarray:
    """Row permutation from per-head [q, k, v] blocks to [all q; all k; all v].

    Output row ``part * n_embd + head * head_dim + d`` takes source row
    ``(head * 3 + part) * head_dim + d``; the same order serves the weight and the bias.
    """
    source = np.arange(3 * n_head * head_dim).reshape(n_head, 3, head_dim)
    return np.ascontiguousarray(source.transpose(1, 0, 2).reshape(-1))


@register("BloomForCausalLM", "BloomModel")
class BloomConverter(ModelConverter):
    gguf_arch = gguf.MODEL_ARCH.BLOOM
    accepts_pre_tokenizer = True
    # Some BLOOM checkpoints name tensors without the "transformer." prefix (BloomModel ones).
    prefix: ClassVar[str] = "transformer."

    def read_config(self) -> None:
        self.n_embd: int = self.hparam("hidden_size", "n_embed")
        self.n_head: int = self.hparam("n_head", "num_attention_heads")
        self.vocab_size: int = self.hparam("vocab_size")
        if self.n_head <= 0 or self.n_embd % self.n_head:
            raise ConfigError(
                f"{self.config_path}: hidden size {self.n_embd} is not a multiple of "
                f"{self.n_head} heads",
                hint="the config is corrupt: restore it from the original checkpoint",
                path=self.config_path,
            )
        if self.config.get("apply_residual_connection_post_layernorm"):
            # llama.cpp's graph takes the residual before the norm; converting would run but
            # compute a different model.
            raise ConversionError(
                f"{self.config_path} sets apply_residual_connection_post_layernorm, which "
                "llama.cpp's BLOOM graph does not implement",
                hint="no published BLOOM uses it; check that config.json is the model's own",
                path=self.config_path,
            )
        self.head_dim = self.n_embd // self.n_head
        self.tied = bool(self.config.get("tie_word_embeddings", True))

    # --- parameters -------------------------------------------------------------------------

    def context_length(self) -> int:
        for key in CONTEXT_KEYS:
            value = self.config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        note = (
            f"context length: config.json names none of {', '.join(CONTEXT_KEYS)}; "
            f"using BLOOM's training length {BLOOM_TRAINING_CONTEXT}"
        )
        log.info(note)
        self.notes.append(note)
        return BLOOM_TRAINING_CONTEXT

    def set_gguf_parameters(self, writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(self.context_length())
        writer.add_embedding_length(self.n_embd)
        writer.add_feed_forward_length(4 * self.n_embd)
        writer.add_block_count(self.block_count)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head)
        writer.add_layer_norm_eps(float(self.hparam("layer_norm_epsilon", kind=float)))

    def set_vocab(self, writer: gguf.GGUFWriter) -> None:
        vocab = build_bpe_vocab(
            self.model_dir, vocab_size=self.vocab_size, pre_tokenizer=self.pre_tokenizer
        )
        write_bpe_vocab(writer, self.model_dir, vocab)
        self.notes.extend(vocab.notes)

    # --- tensors ----------------------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, ff = self.n_embd, 4 * self.n_embd
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (self.vocab_size, e),
            "token_embd_norm.weight": (e,),
            "token_embd_norm.bias": (e,),
            "output_norm.weight": (e,),
            "output_norm.bias": (e,),
            "output.weight": (self.vocab_size, e),
        }
        for i in range(self.block_count):
            blk = f"blk.{i}."
            shapes |= {
                blk + "attn_norm.weight": (e,),
                blk + "attn_norm.bias": (e,),
                blk + "attn_qkv.weight": (3 * e, e),
                blk + "attn_qkv.bias": (3 * e,),
                blk + "attn_output.weight": (e, e),
                blk + "attn_output.bias": (e,),
                blk + "ffn_norm.weight": (e,),
                blk + "ffn_norm.bias": (e,),
                blk + "ffn_up.weight": (ff, e),
                blk + "ffn_up.bias": (ff,),
                blk + "ffn_down.weight": (e, ff),
                blk + "ffn_down.bias": (e,),
            }
        return shapes

    def optional_tensors(self) -> set[str]:
        return {"output.weight"}  # llama.cpp falls back to token_embd.weight

    def skip(self, hf_name: str) -> bool:
        # A tied lm_head (older .bin checkpoints store it) would only duplicate the embedding.
        return super().skip(hf_name) or (self.tied and hf_name.startswith("lm_head."))

    def map_name(self, hf_name: str) -> str:
        return super().map_name(hf_name.removeprefix(self.prefix))

    def row_order(self, hf_name: str, gguf_name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if ".attn_qkv." not in gguf_name:
            return None
        if shape[0] != 3 * self.n_embd:
            raise ConversionError(
                f"{hf_name} has {shape[0]} rows; {self.n_head} heads of {self.head_dim} "
                f"need {3 * self.n_embd}",
                hint="the weights do not belong to this config.json (or are corrupt)",
                path=self.model_dir,
            )
        return qkv_row_order(self.n_head, self.head_dim)
