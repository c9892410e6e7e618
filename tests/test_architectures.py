"""The architecture matrix: its fast subset measured here, its committed table checked.

The whole matrix (every text architecture transformers and the pinned converter share) is the
opt-in run ``python tools/dev.py families``; here, the most used families go through the same
measurement (scripts/archmatrix/measure.py) and must come out proven, and a perturbed tensor
must make the same measurement fail.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from archmatrix import measure as archmeasure  # noqa: E402
from archmatrix.run import FAST  # noqa: E402

from ggufkit.convert.families import (  # noqa: E402
    MATRIX_FILE,
    TABLE_DOC,
    load_matrix,
    proven_note,
    render_markdown,
)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archmatrix")


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
@pytest.mark.parametrize("name", FAST)
def test_fast_subset_is_proven(workdirs: Path, name: str) -> None:
    result = archmeasure.measure(name, workdirs / name.replace(" ", "_"))
    assert result.status == "proven", (result.status, result.cause)
    assert result.rel_diff is not None and result.rel_diff <= archmeasure.F16_TOL
    assert result.n_tokens and result.n_tokens > 500


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("Qwen3ForCausalLM", "blk.1.ffn_down.weight"),
        # a row whose routers are drawn for decisive choices: its gates stay soft enough that a
        # router off by 25% (every gate weight moved, hardly a choice) fails it
        ("MiniMaxM2ForCausalLM", "blk.1.ffn_gate_inp.weight"),
    ],
)
def test_a_perturbed_tensor_fails_the_measurement(workdirs: Path, name: str, tensor: str) -> None:
    """The same checks on the same checkpoint, with one tensor of the GGUF changed."""
    import gguf
    import numpy as np

    from ggufkit.inference.parity import compare_logits, gguf_logits, reference_logits

    workdir = workdirs / f"{name}-perturbed"
    assert archmeasure.measure(name, workdir).status == "proven"
    model_dir, path = workdir / "hf", workdir / "model-f16.gguf"
    ids = archmeasure.random_ids(model_dir)
    reference = reference_logits(model_dir, ids)
    reader = gguf.GGUFReader(path, "r+")
    found = next(t for t in reader.tensors if t.name == tensor)
    data = found.data
    data[...] = (data.astype(np.float32) * 1.25).astype(data.dtype)  # one tensor, +25%
    reader.data.flush()
    del reader, data, found
    status, cause = archmeasure.verdict(
        compare_logits(reference, gguf_logits(path, ids)), None, None
    )
    assert status == "parity off" and "f16 logits" in cause


def test_the_doc_is_generated_from_the_committed_matrix() -> None:
    matrix = load_matrix()
    assert matrix["rows"], f"{MATRIX_FILE} is missing or empty"
    doc = (ROOT / TABLE_DOC).read_text(encoding="utf-8")
    assert doc == render_markdown(matrix), "run `python tools/dev.py families` again"
    names = [row["name"] for row in matrix["rows"]]
    assert set(FAST) <= set(names)
    statuses = {row["status"] for row in matrix["rows"]}
    assert statuses <= set(archmeasure.STATUSES)
    for row in matrix["rows"]:  # every failure names its cause; every proof has its numbers
        if row["status"] == "proven":
            assert row["rel_diff"] <= archmeasure.F16_TOL and row["argmax"] is not None
        else:
            assert row["cause"], row


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_the_matrix_covers_every_shared_architecture() -> None:
    """At this pin: each ...ForCausalLM class both transformers and the converter know."""
    from archmatrix.run import rows

    committed = {row["name"] for row in load_matrix()["rows"]}
    assert {row.name for row in rows()} == committed
    assert len(committed) >= 88


def test_the_fast_subset_is_proven_in_the_table() -> None:
    matrix = load_matrix()
    by_name = {row["name"]: row for row in matrix["rows"]}
    assert [n for n in FAST if by_name[n]["status"] != "proven"] == []


def test_families_command_and_convert_note() -> None:
    from click.testing import CliRunner

    from ggufkit.cli import cli

    result = CliRunner().invoke(cli, ["families", "--json", "--status", "proven"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert rows and all(row["status"] == "proven" for row in rows)
    one = CliRunner().invoke(cli, ["families", "Qwen3ForCausalLM"])
    assert one.exit_code == 0 and "proven" in one.stdout
    assert CliRunner().invoke(cli, ["families", "NoSuchForCausalLM"]).exit_code == 2
    assert proven_note("Qwen3ForCausalLM").startswith("Qwen3ForCausalLM is proven at this pin")
    assert TABLE_DOC in proven_note("NoSuchForCausalLM")


def test_readme_points_to_the_table_and_calls_no_proven_family_unproven() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TABLE_DOC in readme
    for row in load_matrix()["rows"]:
        if row["status"] == "proven":
            for line in readme.splitlines():
                assert not (row["name"] in line and "unproven" in line), line


def test_answers_fill_only_what_a_checkpoint_lacks() -> None:
    from ggufkit.convert.arch_answers import hparam_answers

    neox = {"architectures": ["GPTNeoXForCausalLM"], "num_hidden_layers": 2}
    # neither field: transformers' own default, GPTNeoXConfig().rope_parameters' 0.25
    assert hparam_answers(neox) == {"rotary_pct": 0.25}
    neox["rope_parameters"] = {"partial_rotary_factor": 0.5}
    assert hparam_answers(neox) == {"rotary_pct": 0.5}
    assert hparam_answers({**neox, "rotary_pct": 0.75}) == {}  # the checkpoint's own wins
    hunyuan = {"architectures": ["HunYuanMoEV1ForCausalLM"], "num_hidden_layers": 2}
    hunyuan["intermediate_size"] = 128
    assert hparam_answers(hunyuan)["moe_intermediate_size"] == [128, 128]
    assert hparam_answers({"architectures": ["LlamaForCausalLM"]}) == {}


def test_answers_nested_computed_and_in_upstreams_names() -> None:
    from ggufkit.convert.arch_answers import hparam_answers, hparam_renames

    solar = {"architectures": ["SolarOpenForCausalLM"], "rope_parameters": {"rope_theta": 1.0}}
    assert hparam_answers(solar) == {"rope_parameters": {"partial_rotary_factor": 1.0}}
    solar["rope_parameters"]["partial_rotary_factor"] = 0.5
    assert hparam_answers(solar) == {}
    mimo = {"architectures": ["MiMoV2FlashForCausalLM"], "num_hidden_layers": 2}
    mimo |= {"head_dim": 48, "v_head_dim": 32, "num_attention_heads": 4}
    mimo |= {"num_key_value_heads": 2, "layer_types": ["full_attention", "sliding_attention"]}
    mimo["rope_parameters"] = {"full_attention": {"partial_rotary_factor": 0.334}}
    answers = hparam_answers(mimo)
    assert answers["rope_parameters"] == {"partial_rotary_factor": 0.334}
    assert answers["swa_num_key_value_heads"] == 4  # transformers: twice the full layers'
    assert answers["hybrid_layer_pattern"] == [0, 1]
    minimax = {"architectures": ["MiniMaxM2ForCausalLM"], "head_dim": 128}
    assert hparam_answers(minimax)["rotary_dim"] == 128
    minimax["rope_parameters"] = {"partial_rotary_factor": 0.5}  # as a released M2 loads
    assert hparam_answers(minimax)["rotary_dim"] == 64
    bamba = {"architectures": ["BambaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
    assert hparam_answers(bamba) == {"attn_rotary_emb": 8}
    v3 = {"architectures": ["DeepseekV3ForCausalLM"]}
    assert hparam_answers(v3) == {"scoring_func": "sigmoid"}
    assert hparam_answers({**v3, "scoring_func": "softmax"}) == {}
    granite = {"architectures": ["GraniteMoeHybridForCausalLM"]}
    granite["layer_types"] = ["linear_attention", "full_attention"]
    assert hparam_renames(granite) == {"layer_types": ["mamba", "attention"]}
    assert hparam_renames({**granite, "layer_types": ["mamba", "attention"]}) == {}


def test_no_mtp_only_without_mtp_weights() -> None:
    from ggufkit.convert.arch_answers import upstream_flags

    qwen = {"architectures": ["Qwen3_5ForCausalLM"]}
    assert list(upstream_flags(qwen, ["model.layers.0.mlp.up_proj.weight"])) == ["--no-mtp"]
    assert upstream_flags(qwen, ["mtp.fc.weight"]) == {}
    assert upstream_flags({**qwen, "mtp_num_hidden_layers": 1}, []) == {}
    assert upstream_flags({"architectures": ["Qwen3ForCausalLM"]}, []) == {}


def test_the_child_gives_answers_where_a_model_class_reads_its_own_config() -> None:
    """Mamba-2 hybrids read config.json themselves and hand the dict to the base class."""
    import types

    from ggufkit.convert import _upstream_child as child

    class ModelBase:
        def __init__(self, dir_model: Path, hparams: dict | None = None) -> None:
            self.hparams = hparams if hparams is not None else self.load_hparams(dir_model, False)

        @staticmethod
        def load_hparams(dir_model: Path, is_mistral_format: bool) -> dict:
            return {"layer_types": ["linear_attention", "full_attention"]}

    base = types.SimpleNamespace(ModelBase=ModelBase)
    renamed = {"layer_types": ["mamba", "attention"]}
    child._fill_hparams(base, {"rope_parameters": {"partial_rotary_factor": 1.0}}, renamed)
    loaded = ModelBase(Path("."))
    given = ModelBase(Path("."), hparams={"layer_types": [], "rope_parameters": {}})
    for model in (loaded, given):
        assert model.hparams["layer_types"] == ["mamba", "attention"]
        assert model.hparams["rope_parameters"] == {"partial_rotary_factor": 1.0}
    kept = ModelBase(Path("."), hparams={"rope_parameters": {"partial_rotary_factor": 0.5}})
    assert kept.hparams["rope_parameters"] == {"partial_rotary_factor": 0.5}


@pytest.mark.needs_torch
def test_unscaled_attention_gets_its_temperature_from_the_query_norm() -> None:
    """Gemma 4 puts no 1/sqrt(head_dim) on the scores: the builder's query norms carry it, per
    layer (sliding heads 16, full heads 32), and only there."""
    import torch
    import transformers
    from archmatrix.checkpoints import jitter

    config = transformers.Gemma4TextConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=32, vocab_size=32,
        hidden_size_per_layer_input=0, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    plain, scaled = (transformers.Gemma4ForCausalLM(config) for _ in range(2))
    jitter(plain, 0)
    jitter(scaled, 0, unscaled_attention=True)
    for layer, head in ((0, 16), (1, 32)):
        name = f"model.layers.{layer}.self_attn.q_norm.weight"
        want = dict(plain.named_parameters())[name] * head**-0.5
        assert torch.allclose(dict(scaled.named_parameters())[name], want)
        name = f"model.layers.{layer}.self_attn.k_norm.weight"
        assert torch.equal(
            dict(scaled.named_parameters())[name], dict(plain.named_parameters())[name]
        )


@pytest.mark.needs_torch
def test_gemma3n_shared_layers_get_key_value_weights_only_where_llama_cpp_reads_none() -> None:
    """transformers 5 saves no k/v weights for Gemma 3n's KV-shared layers; llama.cpp's loader
    wants them for every layer but its graph reads them only before layer 20."""
    from ggufkit.convert._upstream_child import GEMMA3N_FIRST_SHARED, shared_kv_placeholders

    hparams = {"num_hidden_layers": 25, "num_kv_shared_layers": 5, "head_dim": 16}
    hparams |= {"hidden_size": 128, "num_key_value_heads": 2}
    attn = "model.layers.{}.self_attn.{}.weight"
    names = {attn.format(i, "q_proj") for i in range(25)}
    names |= {attn.format(i, kind) for i in range(20) for kind in ("k_proj", "v_proj", "k_norm")}
    names.add(attn.format(22, "k_norm"))  # one a checkpoint has is kept
    given = dict(shared_kv_placeholders(hparams, names))
    assert GEMMA3N_FIRST_SHARED == 20
    assert set(given) == {
        attn.format(i, kind) for i in range(20, 25) for kind in ("k_proj", "v_proj", "k_norm")
    } - {attn.format(22, "k_norm")}
    assert given[attn.format(24, "k_proj")].shape == (32, 128)
    assert given[attn.format(24, "v_proj")].shape == (32, 128)
    assert given[attn.format(20, "k_norm")].shape == (16,)
    assert all(not bool(t.any()) for t in given.values())
    # Elsewhere llama.cpp would read them: nothing given, llama.cpp refuses the file.
    assert not list(shared_kv_placeholders({**hparams, "num_kv_shared_layers": 10}, names))


@pytest.mark.needs_llamacpp
def test_the_qwen35_split_is_llama_cpps() -> None:
    """The regex ggufkit matches for 'qwen35' is the tokenizer.json one llama.cpp's vocab code
    quotes for its QWEN35 pre-tokenizer."""
    import re

    from ggufkit.convert.vocab_bpe import REGEX_FAMILIES
    from ggufkit.llamacpp.source import ensure_source

    text = (ensure_source() / "src" / "llama-vocab.cpp").read_text(encoding="utf-8")
    block = text[text.index("case LLAMA_VOCAB_PRE_TYPE_QWEN35:") :]
    quoted = re.search(r'// original regex from tokenizer.json\s*//\s*"(.*)"\n', block)
    assert quoted is not None
    assert quoted.group(1).encode().decode("unicode_escape") == REGEX_FAMILIES["qwen35"][0]


@pytest.mark.needs_torch
def test_the_derived_pre_tokenizer_is_the_one_transformers_runs(tmp_path: Path) -> None:
    """transformers 5 runs a family class's own split (Qwen2's) whatever tokenizer.json says."""
    from tokenizer_training import as_transformers_tokenizer, train_byte_bpe
    from transformers import AutoTokenizer

    from ggufkit.convert.upstream import derived_pre_tokenizer

    corpus = ROOT / "tests" / "data" / "corpus.txt"
    as_transformers_tokenizer(train_byte_bpe(400, files=[corpus], style="gpt2")).save_pretrained(
        str(tmp_path)
    )
    assert derived_pre_tokenizer(tmp_path) == "gpt-2"
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}))
    runs = AutoTokenizer.from_pretrained(str(tmp_path)).backend_tokenizer.pre_tokenizer
    assert [piece for piece, _ in runs.pre_tokenize_str("x 2026")][-4:] == ["2", "0", "2", "6"]
    assert derived_pre_tokenizer(tmp_path) == "qwen2"


def test_an_f16_failure_says_whether_the_f32_file_is_right() -> None:
    """The status stays the f16 one; the cause says conversion or rounding."""
    assert "f16 rounding" in archmeasure.f32_says(archmeasure.F16_TOL / 10)
    assert "off too" in archmeasure.f32_says(archmeasure.F16_TOL * 2)


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
def test_the_f32_check_computes_in_f32(tiny_llama_gqa_dir: Path, tmp_path: Path) -> None:
    """The f32 file's check keeps llama.cpp's KV cache and attention in f32: it matches
    transformers far closer than the default path (f16 KV cache), so that what is left after
    it is the conversion's, not llama.cpp's rounding (which flipped AFMoE's near-tie expert)."""
    from ggufkit.convert import convert
    from ggufkit.inference.parity import compare_logits, gguf_logits, reference_logits

    f32_file = convert(tiny_llama_gqa_dir, tmp_path / "m.gguf", outtype="f32").output
    ids = archmeasure.random_ids(tiny_llama_gqa_dir, 64)
    reference = reference_logits(tiny_llama_gqa_dir, ids)
    exact = compare_logits(reference, archmeasure.f32_logits(f32_file, ids)).rel_diff
    default = compare_logits(reference, gguf_logits(f32_file, ids)).rel_diff
    assert exact < 1e-5 and exact * 10 < default, (exact, default)


def test_causes_carry_no_temporary_paths(tmp_path: Path) -> None:
    workdir = tmp_path / "Row"
    cause = f"llama.cpp cannot load {workdir}/model-f16.gguf: Failed to load /tmp/abc123/x.gguf"
    assert archmeasure.stable(cause, workdir) == (
        "llama.cpp cannot load model-f16.gguf: Failed to load x.gguf"
    )


@pytest.mark.needs_torch
def test_convert_says_in_one_line_whether_the_architecture_is_proven(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from ggufkit.cli import cli

    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "at this pin" in line]
    assert len(lines) == 1 and TABLE_DOC in lines[0]
    assert ("is proven" in lines[0]) == (
        next(r for r in load_matrix()["rows"] if r["name"] == "LlamaForCausalLM")["status"]
        == "proven"
    )


def test_the_child_and_the_parent_name_the_same_files() -> None:
    """The upstream child runs as a script (it cannot import ggufkit): its request line and the
    runtime tokenizer's file name are written twice and must agree."""
    from ggufkit.convert import _upstream_child, upstream

    assert _upstream_child.NEED_PRE_TOKENIZER == upstream.NEED_PRE_TOKENIZER
    assert _upstream_child.RUNTIME_TOKENIZER == upstream.RUNTIME_TOKENIZER


@pytest.mark.needs_torch
def test_decisive_routers_widen_the_margin_and_keep_the_gates_soft() -> None:
    """The redraw keeps a router's scale (the family's initialiser's) and its gates unsaturated,
    and its note reports what transformers computes with the drawn routers."""
    import re
    import types

    import torch
    import transformers
    from archmatrix import routers
    from archmatrix.checkpoints import small_config

    tokenizer = types.SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    arch = "MiniMaxM2ForCausalLM"
    config = small_config(transformers.MiniMaxM2Config, _Sized(tokenizer, 600), arch)
    torch.manual_seed(0)
    model = transformers.MiniMaxM2ForCausalLM(config).float().eval()
    ids = archmeasure.random_ids_for(int(config.vocab_size))
    found, top_k = routers.find_routers(model)
    routers._forward(model, found, ids)
    before = min(routers._margin(r.scores, top_k) for r in found)
    stds = [float(r.weight.detach().std()) for r in found]
    note = routers.make_decisive(model, ids, seed=0)
    routers._forward(model, found, ids)
    after = min(routers._margin(r.scores, top_k) for r in found)
    share = max(routers._top_share(r, top_k) for r in found)
    assert after >= before and after > 0.02
    assert share < 0.9  # no expert near one-hot among the chosen
    for router, std in zip(found, stds, strict=True):
        assert 0.7 < float(router.weight.detach().std()) / std < 1.3
    numbers = [float(x) for x in re.findall(r"\d+\.\d+", note)]
    assert numbers == [round(after, 3), round(share, 2)]
    assert routers.make_decisive(model, ids, seed=0, redraw=False).endswith(note.split(": ")[1])


class _Sized:
    def __init__(self, inner: object, size: int) -> None:
        self.__dict__.update(vars(inner))
        self._size = size

    def __len__(self) -> int:
        return self._size
