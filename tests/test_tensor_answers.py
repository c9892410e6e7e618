"""ggufkit's tensor answers to the pinned converter (arch_answers' tables, _upstream_tensors).

Renames are checked against upstream's own name maps (the pinned gguf-py's TensorNameMap, and
DeepSeek-V4's converter table) on the names transformers 5 really saves for tiny models;
layouts by the attention scores they must keep: transformers' rotary embedding on the
checkpoint's rows against llama.cpp's NORM rope (adjacent pairs) on the rows the converter
writes. The architecture matrix rows are the end-to-end proof.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ggufkit.convert import _upstream_tensors as answers
from ggufkit.convert.arch_answers import (
    IndicesOf,
    ValuesOf,
    bpe_without_sentencepiece,
    converter_patches,
    hparam_answers,
    tensor_layouts,
    tensor_renames,
)

ROOT = Path(__file__).resolve().parent.parent
RENAMED = ("BitNetForCausalLM", "KimiLinearForCausalLM", "HYV4ForCausalLM", "DeepseekV4ForCausalLM")


def test_computed_answers_read_transformers_5_fields() -> None:
    config = {"layer_types": ["linear_attention", "full_attention", "sliding_attention"]}
    config["compress_rates"] = {"full_attention": 4}
    assert IndicesOf("layer_types", "full_attention").read(config) == [2]
    assert ValuesOf("layer_types", "compress_rates", (("sliding_attention", 0),)).read(
        {**config, "layer_types": ["full_attention", "sliding_attention"]}
    ) == [4, 0]
    kimi = {"architectures": ["KimiLinearForCausalLM"], "num_hidden_layers": 3}
    kimi |= {"layer_types": [*config["layer_types"][:2], "full_attention"]}
    kimi |= {"mlp_layer_types": ["dense", "sparse", "sparse"], "linear_head_dim": 16}
    got = hparam_answers(kimi)
    assert got["linear_attn_config"]["full_attn_layers"] == [2, 3]
    assert got["linear_attn_config"]["kda_layers"] == [1]
    assert got["first_k_dense_replace"] == 1 and got["scoring_func"] == "sigmoid"
    # the release's own linear_attn_config wins, key by key
    released = {**kimi, "linear_attn_config": {"full_attn_layers": [3], "kda_layers": [1, 2]}}
    assert "full_attn_layers" not in hparam_answers(released).get("linear_attn_config", {})


def test_answers_are_chosen_per_architecture() -> None:
    bitnet = {"architectures": ["BitNetForCausalLM"]}
    assert bpe_without_sentencepiece(bitnet) and not bpe_without_sentencepiece({})
    assert tensor_layouts({"architectures": ["BambaForCausalLM"]}) == ["partial_rotary"]
    assert converter_patches({"architectures": ["DeepseekV4ForCausalLM"]})
    assert not tensor_renames({"architectures": ["LlamaForCausalLM"]})
    assert not tensor_layouts({"architectures": ["GraniteMoeHybridForCausalLM"]})


def _compiled(arch: str) -> list[tuple[Any, str]]:
    import re

    return [(re.compile(p), r) for p, r in tensor_renames({"architectures": [arch]})]


def test_renames_apply_where_upstream_indexes_and_refuse_a_clash() -> None:
    calls: list[str] = []

    class ModelBase:
        hparams: ClassVar[dict[str, Any]] = {"architectures": ["BitNetForCausalLM"]}

        def index_tensors(self) -> dict[str, Any]:
            return {
                "model.layers.0.mlp.ffn_sub_norm.weight": lambda: calls.append("read") or 1,
                "model.layers.0.self_attn.q_proj.weight": lambda: 2,
            }

    base = types.SimpleNamespace(ModelBase=ModelBase)
    renames = tensor_renames(ModelBase.hparams)
    answers.install(base, None, renames, [], [])
    tensors = ModelBase().index_tensors()
    assert set(tensors) == {
        "model.layers.0.mlp.ffn_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
    }
    assert not calls  # still lazy
    assert tensors["model.layers.0.mlp.ffn_layernorm.weight"]() == 1

    class Clash(ModelBase):
        def index_tensors(self) -> dict[str, Any]:
            return {
                "model.layers.0.mlp.ffn_sub_norm.weight": lambda: 1,
                "model.layers.0.mlp.ffn_layernorm.weight": lambda: 2,
            }

    answers.install(types.SimpleNamespace(ModelBase=Clash), None, renames, [], [])
    with pytest.raises(ValueError, match="replaces a tensor"):
        Clash().index_tensors()


def _saved_names(arch: str, out: Path) -> list[str]:
    """The tensor names transformers 5 saves for the matrix's tiny ``arch``."""
    import torch
    import transformers
    from safetensors import safe_open

    sys.path.insert(0, str(ROOT / "scripts"))
    from archmatrix.checkpoints import small_config

    class Tokens:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

        def __len__(self) -> int:
            return 64

    model_cls = getattr(transformers, arch)
    config = small_config(model_cls.config_class, Tokens(), arch)  # the matrix's shape
    torch.manual_seed(0)
    model_cls(config).save_pretrained(str(out))
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


UPSTREAM_MAPS = """
import json, sys
from gguf import MODEL_ARCH, get_tensor_name_map
from conversion.deepseek import DeepseekV4Model
archs = {"BitNetForCausalLM": MODEL_ARCH.BITNET, "KimiLinearForCausalLM": MODEL_ARCH.KIMI_LINEAR,
         "HYV4ForCausalLM": MODEL_ARCH.HY_V4}
unmapped = []
for arch, names in json.loads(sys.stdin.read()).items():
    for name in names:
        if arch == "DeepseekV4ForCausalLM":
            bid = next((int(p) for p in name.split(".") if p.isdecimal()), None)
            try:
                DeepseekV4Model._map_dsv4_tensor_name(None, name, bid)
            except ValueError:
                unmapped.append(name)
        elif get_tensor_name_map(archs[arch], 8).get_name(name, (".weight", ".bias")) is None:
            unmapped.append(name)
print(json.dumps(unmapped))
"""


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_renamed_tensors_are_names_upstream_maps(tmp_path: Path) -> None:
    """Each name a rename rule changes, on what transformers 5 saves, is one upstream maps
    (asked of the pinned gguf-py and converter in a child, as the upstream engine runs them)."""
    from ggufkit.llamacpp.source import ensure_source

    renamed: dict[str, list[str]] = {}
    for arch in RENAMED:
        rules = _compiled(arch)
        names = _saved_names(arch, tmp_path / arch)
        changed = [answers.rename_tensor(n, rules) for n in names]
        renamed[arch] = [new for new, old in zip(changed, names, strict=True) if new != old]
        assert renamed[arch], arch  # each rule set meets the names transformers saves
    assert "model.layers.0.mlp.ffn_layernorm.weight" in renamed["BitNetForCausalLM"]
    source = ensure_source()
    done = subprocess.run(
        [sys.executable, "-c", UPSTREAM_MAPS],
        input=json.dumps(renamed),
        capture_output=True,
        text=True,
        check=True,
        cwd=source,
        env={"PYTHONPATH": f"{source / 'gguf-py'}:{source}", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(done.stdout) == []


def _rope_norm(x: Any, position: int, n_rot: int, base: float = 10000.0) -> Any:
    """llama.cpp's NORM rope: dims (2i, 2i+1) of the first ``n_rot`` turn by position x
    base^(-2i/n_rot), the rest pass."""
    import torch

    out = x.clone()
    for i in range(n_rot // 2):
        angle = position * base ** (-2 * i / n_rot)
        c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i], out[..., 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


def _rope_halves(x: Any, position: int, n_rot: int, base: float = 10000.0) -> Any:
    """transformers' rotate_half rope on the first ``n_rot`` dims (Bamba's partial rotary)."""
    import torch
    from transformers.models.bamba.modeling_bamba import apply_rotary_pos_emb

    inv = base ** (-torch.arange(0, n_rot, 2).float() / n_rot)
    freqs = torch.cat([position * inv, position * inv])
    cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]  # (batch, position, dims)
    q, _ = apply_rotary_pos_emb(x[None, None, None], x[None, None, None], cos, sin)
    return q[0, 0, 0]


def _upstream_whole_head_permute(rows: Any, n_head: int) -> Any:
    """What upstream's LlamaModel.permute does to q/k rows (granitehybrid: undo_permute)."""
    head = rows.shape[0] // n_head
    return rows.reshape(n_head, 2, head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@pytest.mark.needs_torch
def test_bambas_layout_keeps_transformers_attention_scores() -> None:
    import torch

    n_head, head, rotated = 2, 16, 8
    hparams = {"num_attention_heads": n_head, "hidden_size": n_head * head}
    hparams["attn_rotary_emb"] = rotated
    generator = torch.Generator().manual_seed(0)
    wq, wk = torch.randn(2, n_head * head, 12, generator=generator)
    x_q, x_k = torch.randn(2, 12, generator=generator)
    written = {
        name: _upstream_whole_head_permute(
            answers.partial_rotary(f"model.layers.1.self_attn.{name}.weight", w, hparams), n_head
        )
        for name, w in (("q_proj", wq), ("k_proj", wk))
    }
    for h in range(n_head):
        rows = slice(h * head, (h + 1) * head)
        want = _rope_halves(wq[rows] @ x_q, 5, rotated) @ _rope_halves(wk[rows] @ x_k, 2, rotated)
        got = _rope_norm(written["q_proj"][rows] @ x_q, 5, rotated) @ _rope_norm(
            written["k_proj"][rows] @ x_k, 2, rotated
        )
        assert torch.allclose(got, want, atol=1e-5), (h, got, want)
    # without the answer, upstream's whole-head permutation changes the scores
    plain = _upstream_whole_head_permute(wq, n_head)[:head] @ x_q
    unanswered = _rope_norm(plain, 5, rotated) @ _rope_norm(
        _upstream_whole_head_permute(wk, n_head)[:head] @ x_k, 2, rotated
    )
    assert not torch.allclose(unanswered, want, atol=1e-3)


@pytest.mark.needs_torch
def test_hy_v4_layout_keeps_transformers_attention_scores() -> None:
    """The rotated tail of each MLA query head and of the shared key: transformers turns it by
    halves, llama.cpp's hy_v4 graph (the rows written unpermuted) by adjacent pairs."""
    import torch

    nope, rope, n_head, lora = 4, 8, 2, 6
    hparams = {"qk_rope_head_dim": rope, "qk_nope_head_dim": nope, "index_head_dim": 16}
    generator = torch.Generator().manual_seed(1)
    wq = torch.randn(n_head * (nope + rope), 10, generator=generator)
    wkv = torch.randn(lora + rope, 10, generator=generator)
    x_q, x_k = torch.randn(2, 10, generator=generator)
    q_rows = answers.mla_rope_halves("model.layers.0.self_attn.q_b_proj.weight", wq, hparams)
    kv_rows = answers.mla_rope_halves(
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", wkv, hparams
    )
    k_tail, k_tail_written = (wkv @ x_k)[lora:], (kv_rows @ x_k)[lora:]
    for h in range(n_head):
        tail = slice(h * (nope + rope) + nope, (h + 1) * (nope + rope))
        want = _rope_halves((wq @ x_q)[tail], 7, rope) @ _rope_halves(k_tail, 3, rope)
        got = _rope_norm((q_rows @ x_q)[tail], 7, rope) @ _rope_norm(k_tail_written, 3, rope)
        assert torch.allclose(got, want, atol=1e-5)
        kept = slice(tail.start - nope, tail.start)  # the unrotated part stays in place
        assert torch.equal(q_rows[kept], wq[kept])


def test_bpe_vocabulary_where_the_checkpoint_has_no_sentencepiece(tmp_path: Path) -> None:
    from ggufkit.convert import _upstream_child as child

    class TextModel:
        def __init__(self, folder: Path) -> None:
            self.dir_model = folder

        def _set_vocab_sentencepiece(self) -> str:
            return "spm"

        def _set_vocab_gpt2(self) -> str:
            return "bpe"

    child._bpe_without_sentencepiece(types.SimpleNamespace(TextModel=TextModel))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert TextModel(tmp_path)._set_vocab_sentencepiece() == "bpe"
    (tmp_path / "tokenizer.model").write_bytes(b"")
    assert TextModel(tmp_path)._set_vocab_sentencepiece() == "spm"  # the checkpoint's own


@pytest.mark.needs_torch
def test_unquantized_routed_experts_are_stacked_per_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DeepSeek-V4's converter (faked: its hooks as the pinned one calls them) writes the
    release's MXFP4 experts; a float checkpoint's are stacked and named by the converter."""
    import torch

    written: list[str] = []

    class DeepseekV4Model:
        def __init__(self, tensors: dict[str, Any]) -> None:
            self.model_tensors, self.hparams = tensors, {"n_routed_experts": 2}
            self.ftype, self._is_mxfp4 = "F16", False

        def format_tensor_name(self, key: str, bid: int) -> str:
            return f"blk.{bid}.{key}"

        def _write_mxfp4_expert_tensor(self, bid: int, proj: str, key: str) -> list[str]:
            written.append(f"{bid}.{proj}")
            return []

        def generate_extra_tensors(self) -> Any:
            for proj, key in answers.DSV4_EXPERTS.items():
                for name in self._write_mxfp4_expert_tensor(0, proj, key):
                    del self.model_tensors[name]
            yield from ()

        def modify_tensors(self, data: Any, name: str, bid: int | None) -> list[Any]:
            return [("mapped." + name, data)]

        def prepare_tensors(self) -> None:
            self.ftype, self._is_mxfp4 = "MXFP4_MOE", True

    fake = types.ModuleType("conversion")
    fake.deepseek = types.SimpleNamespace(DeepseekV4Model=DeepseekV4Model)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conversion", fake)
    answers.float_routed_experts(None)
    experts = {
        f"layers.0.ffn.experts.{e}.{p}.weight": (lambda e=e: torch.full((3, 2), float(e)))
        for e in range(2)
        for p in answers.DSV4_EXPERTS
    }
    model = DeepseekV4Model(dict(experts))
    extra = dict(model.generate_extra_tensors())
    assert not written and not model.model_tensors  # no MXFP4 written, every expert consumed
    assert set(extra) == {f"ggufkit.0.experts.{p}" for p in answers.DSV4_EXPERTS}
    assert extra["ggufkit.0.experts.w1"][:, 0, 0].tolist() == [0.0, 1.0]  # expert order kept
    assert model.modify_tensors(extra["ggufkit.0.experts.w2"], "ggufkit.0.experts.w2", 0)[0][0] == (
        "blk.0.FFN_DOWN_EXP"
    )
    model.prepare_tensors()
    assert (model.ftype, model._is_mxfp4) == ("F16", False)
    quantized = DeepseekV4Model({**experts, "layers.0.ffn.experts.0.w1.scale": lambda: 1})
    dict(quantized.generate_extra_tensors())
    assert written[0] == "0.w1"  # the release's MXFP4 path


@pytest.mark.needs_torch
def test_bitnets_released_weights_unpack_as_transformers_packs_them() -> None:
    import torch
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    generator = torch.Generator().manual_seed(2)
    ternary = torch.randint(-1, 2, (12, 5), generator=generator).float()
    packed = pack_weights(ternary.clone())
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5)
    scale = torch.tensor([4.0])
    assert torch.equal(unpack_weights(packed, torch.float32), ternary)  # transformers' own
    assert torch.equal(answers.unpack_ternary(packed, scale), ternary / 4.0)
