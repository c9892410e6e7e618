"""Tensor answers of the upstream child (``_upstream_child``): names and layouts given to the
pinned converter as it reads a checkpoint saved by transformers 5.

Loaded by the child from its own file (it imports nothing from ggufkit, and runs before the
pinned gguf-py's converter is imported). Three kinds of answer, each per architecture and chosen
by the parent (``ggufkit.convert.arch_answers``):

- renames: (pattern, replacement) pairs over tensor names (data, ``TENSOR_RENAMES``);
- layouts: a named function of LAYOUTS that rewrites a tensor where upstream would lay it out
  wrongly for llama.cpp, given the config as upstream reads it (after ggufkit's config answers);
- patches: a named function of PATCHES that changes a converter's hooks where it reads only a
  release's own form (DeepSeek-V4's MXFP4 experts, BitNet's packed weights).

Renames and layouts are applied where upstream indexes the checkpoint
(``ModelBase.index_tensors``), so every converter sees the answered names and the tensors load
lazily as before.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

Layout = Callable[[str, Any, dict[str, Any]], Any]


def rename_tensor(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    """``name`` after every rule that matches it, in order."""
    for pattern, replacement in rules:
        name = pattern.sub(replacement, name)
    return name


def partial_rotary_rows(head_dim: int, rotated: int) -> list[int]:
    """Row order within a head that undoes upstream's whole-head q/k permutation (llama.cpp's
    NORM rope: pairs (i, i + head_dim/2) made adjacent) and makes adjacent, instead, the pairs
    transformers rotates when only the first ``rotated`` dims turn: (i, i + rotated/2), the rest
    left in place. Row k of the answer is the checkpoint's row ``order[k]``."""
    if rotated % 2 or head_dim % 2 or not 0 < rotated <= head_dim:
        raise ValueError(f"cannot lay out {rotated} rotated dims of a {head_dim}-wide head")
    half, rot_half = head_dim // 2, rotated // 2
    wanted = [  # llama.cpp's row j: the checkpoint's row wanted there
        (j // 2 + (j % 2) * rot_half) if j < rotated else j for j in range(head_dim)
    ]
    upstream_reads = [j // 2 + (j % 2) * half for j in range(head_dim)]  # row j <- in[f(j)]
    order = [0] * head_dim
    for j in range(head_dim):
        order[upstream_reads[j]] = wanted[j]
    return order


def partial_rotary(name: str, tensor: Any, hparams: dict[str, Any]) -> Any:
    """q/k rows of a model whose converter permutes the whole head for NORM rope although only
    ``attn_rotary_emb`` dims of it rotate (Bamba: half of each head)."""
    if not name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")) and not (
        name.endswith(("self_attn.q_proj.bias", "self_attn.k_proj.bias"))
    ):
        return tensor
    n_head = int(hparams["num_attention_heads"])
    head_dim = int(hparams.get("head_dim") or int(hparams["hidden_size"]) // n_head)
    rotated = int(hparams.get("attn_rotary_emb") or head_dim)
    if rotated == head_dim:
        return tensor
    import torch

    order = torch.tensor(partial_rotary_rows(head_dim, rotated))
    heads = tensor.shape[0] // head_dim
    rows = (order + head_dim * torch.arange(heads).unsqueeze(1)).reshape(-1)
    return tensor[rows]


def _pairs_at_tail(tensor: Any, block: int, rotated: int) -> Any:
    """``tensor`` with the last ``rotated`` rows of every ``block`` rows reordered from halves
    (rotate_half: dims i and i + rotated/2 turn together) to adjacent pairs (llama.cpp's NORM
    rope)."""
    import torch

    half = rotated // 2
    order = list(range(block - rotated)) + [
        block - rotated + j // 2 + (j % 2) * half for j in range(rotated)
    ]
    blocks = tensor.shape[0] // block
    rows = (torch.tensor(order) + block * torch.arange(blocks).unsqueeze(1)).reshape(-1)
    return tensor[rows]


def mla_rope_halves(name: str, tensor: Any, hparams: dict[str, Any]) -> Any:
    """Rows of the rotated parts of multi-head latent attention and its indexer (the tail of
    each head, as in DeepSeek's layout) for a model that transformers rotates by halves and
    whose llama.cpp graph, converted without a permutation, rotates adjacent pairs (HY V4)."""
    rope = int(hparams["qk_rope_head_dim"])
    qk_head = int(hparams["qk_nope_head_dim"]) + rope
    index_head = int(hparams.get("index_head_dim") or 0)
    if name.endswith("self_attn.q_b_proj.weight"):
        return _pairs_at_tail(tensor, qk_head, rope)
    if name.endswith("self_attn.kv_a_proj_with_mqa.weight"):
        return _pairs_at_tail(tensor, tensor.shape[0], rope)
    if name.endswith("self_attn.indexer.wq_b.weight"):
        return _pairs_at_tail(tensor, index_head, rope)
    if name.endswith(("indexer.wk.weight", "indexer.k_norm.weight", "indexer.k_norm.bias")):
        return _pairs_at_tail(tensor, index_head, rope)
    return tensor


LAYOUTS: dict[str, Layout] = {"partial_rotary": partial_rotary, "mla_rope_halves": mla_rope_halves}

DSV4_EXPERTS = {"w1": "FFN_GATE_EXP", "w2": "FFN_DOWN_EXP", "w3": "FFN_UP_EXP"}


def float_routed_experts(gguf: Any) -> None:
    """DeepSeek-V4's converter reads only the release's MXFP4 routed experts (a scale beside
    each weight) and repacks them; a transformers checkpoint holds them unquantized. Those
    are stacked per layer and written in the output type, as other MoE converters do."""
    import torch
    from conversion import deepseek

    model = deepseek.DeepseekV4Model
    write_mxfp4, modify, extra = (
        model._write_mxfp4_expert_tensor,
        model.modify_tensors,
        model.generate_extra_tensors,
    )
    prepare = model.prepare_tensors

    def _write_mxfp4_expert_tensor(self: Any, bid: int, proj: str, key: Any) -> list[str]:
        names = [
            f"layers.{bid}.ffn.experts.{eid}.{proj}.weight"
            for eid in range(self.hparams["n_routed_experts"])
        ]
        if names[0].removesuffix("weight") + "scale" in self.model_tensors:
            return list(write_mxfp4(self, bid, proj, key))
        loads = [self.model_tensors[name] for name in names]
        self.ggufkit_experts[f"ggufkit.{bid}.experts.{proj}"] = (
            self.format_tensor_name(key, bid),
            loads,
        )
        return names

    def generate_extra_tensors(self: Any) -> Any:
        self.ggufkit_experts = {}
        yield from extra(self)
        for name, (_, loads) in self.ggufkit_experts.items():
            yield name, torch.stack([load() for load in loads])

    def modify_tensors(self: Any, data: Any, name: str, bid: int | None) -> Any:
        if name.startswith("ggufkit.") and name in self.ggufkit_experts:
            return [(self.ggufkit_experts[name][0], data)]
        return modify(self, data, name, bid)

    def prepare_tensors(self: Any) -> None:
        ftype = self.ftype
        prepare(self)
        if self.ggufkit_experts:  # no MXFP4 written: the file type stays the output type
            self.ftype, self._is_mxfp4 = ftype, False

    model._write_mxfp4_expert_tensor = _write_mxfp4_expert_tensor
    model.generate_extra_tensors = generate_extra_tensors
    model.modify_tensors = modify_tensors
    model.prepare_tensors = prepare_tensors
    print(
        "ggufkit: answered unquantized routed experts (upstream reads MXFP4 only)", file=sys.stderr
    )


def unpack_ternary(packed: Any, scale: Any) -> Any:
    """BitNet's released weights: four ternary values per byte (2 bits each, value + 1), the
    rows of the i-th quarter of the matrix in bits 2i, 2i+1; the weight is value / scale."""
    import torch

    quarters = [((packed >> (2 * i)) & 3).to(torch.float32) - 1 for i in range(4)]
    return torch.cat(quarters, dim=0) / scale.to(torch.float32)


def bitnet_packed(gguf: Any) -> None:
    """BitNet b1.58 as released (quantization_config bitnet, offline): upstream unpacks the
    weights with a shift its lazy tensors refuse, then rounds them to ternary again by their
    mean, which is not the identity on ternary values with zeros (it scales each matrix by its
    share of non-zeros). They are unpacked here, and written as they are."""
    from conversion import base, bitnet
    from gguf.lazy import LazyBase

    dequant, modify, rounding = (
        base.ModelBase.dequant_model,
        bitnet.BitnetModel.modify_tensors,
        bitnet.BitnetModel.weight_quant,
    )

    def dequant_model(self: Any) -> Any:
        quantization = self.hparams.get("quantization_config") or {}
        packed = quantization.get("linear_class", "bitlinear") == "bitlinear"  # 2-bit weights
        if quantization.get("quant_method") == "bitnet" and packed:
            self.ggufkit_ternary = set()
            for name in [n for n in self.model_tensors if n.endswith(".weight_scale")]:
                weight = name.removesuffix("_scale")
                packed, scale = self.model_tensors[weight], self.model_tensors.pop(name)
                self.model_tensors[weight] = lambda w=packed, s=scale: unpack_ternary(
                    LazyBase.to_eager(w()), LazyBase.to_eager(s())
                )
                self.ggufkit_ternary.add(weight)
            if self.ggufkit_ternary:
                count = len(self.ggufkit_ternary)
                print(f"ggufkit: answered {count} packed ternary weights", file=sys.stderr)
        return dequant(self)

    def modify_tensors(self: Any, data: Any, name: str, bid: int | None) -> Any:
        self.ggufkit_exact = name in getattr(self, "ggufkit_ternary", ())
        yield from modify(self, data, name, bid)

    def weight_quant(self: Any, weight: Any) -> Any:
        return weight if getattr(self, "ggufkit_exact", False) else rounding(self, weight)

    base.ModelBase.dequant_model = dequant_model
    bitnet.BitnetModel.modify_tensors = modify_tensors
    bitnet.BitnetModel.weight_quant = weight_quant


PATCHES: dict[str, Callable[[Any], None]] = {
    "float_routed_experts": float_routed_experts,
    "bitnet_packed": bitnet_packed,
}


def install(
    base: Any, gguf: Any, renames: list[tuple[str, str]], layouts: list[str], patches: list[str]
) -> None:
    """Answer tensor names and layouts where upstream indexes the checkpoint, and install the
    named converter patches."""
    for patch in patches:
        PATCHES[patch](gguf)
    rules = [(re.compile(pattern), replacement) for pattern, replacement in renames]
    fixes = [LAYOUTS[name] for name in layouts]
    original = base.ModelBase.index_tensors

    def index_tensors(self: Any, *args: Any, **kwargs: Any) -> Any:
        tensors = original(self, *args, **kwargs)
        answered: dict[str, Any] = {}
        renamed = 0
        for name, load in tensors.items():
            new = rename_tensor(name, rules)
            if new != name:
                if new in tensors or new in answered:
                    raise ValueError(f"ggufkit: renaming {name!r} to {new!r} replaces a tensor")
                renamed += 1
            for fix in fixes:
                load = _fixed(fix, new, load, self.hparams)
            answered[new] = load
        if renamed:
            print(f"ggufkit: answered {renamed} tensor names in upstream's names", file=sys.stderr)
        for name in layouts:
            print(f"ggufkit: answered the tensor layout {name!r}", file=sys.stderr)
        return answered

    base.ModelBase.index_tensors = index_tensors


def _fixed(fix: Layout, name: str, load: Callable[[], Any], hparams: dict[str, Any]) -> Any:
    return lambda: fix(name, load(), hparams)
