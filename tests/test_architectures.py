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
def test_a_perturbed_tensor_fails_the_measurement(workdirs: Path) -> None:
    """The same checks on the same checkpoint, with one tensor of the GGUF changed."""
    import gguf
    import numpy as np

    from ggufkit.inference.parity import compare_logits, gguf_logits, reference_logits

    name = "Qwen3ForCausalLM"
    workdir = workdirs / f"{name}-perturbed"
    assert archmeasure.measure(name, workdir).status == "proven"
    model_dir, path = workdir / "hf", workdir / "model-f16.gguf"
    ids = archmeasure.random_ids(model_dir)
    reference = reference_logits(model_dir, ids)
    reader = gguf.GGUFReader(path, "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    data = tensor.data
    data[...] = (data.astype(np.float32) * 1.25).astype(data.dtype)  # one tensor, +25%
    reader.data.flush()
    del reader, data, tensor
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
