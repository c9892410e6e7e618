"""`ggufkit quantize`: the mix's bits per weight in --list, "did you mean", and llama-quantize's
--tensor-type, --dry-run, --prune-layers and --keep-split, against the built binary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader

from ggufkit.cli import cli
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.formats.gguf_split import split_set
from ggufkit.quantize.mix_bpw import REFERENCE
from ggufkit.quantize.types import QuantType, TypeTable

pytestmark = pytest.mark.needs_llamacpp


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["quantize", *args])
    return result.exit_code, result.stdout, result.stderr


def test_unknown_type_says_did_you_mean() -> None:
    table = TypeTable(
        tuple(
            QuantType(n, i, "", None) for i, n in enumerate(["Q4_0", "Q4_K_S", "Q4_K_M", "Q8_0"])
        ),
        "test",
    )
    assert table.close_to("q4_k_n")[:2] == ["q4_k_s", "q4_k_m"]
    assert table.close_to("q4-k-m") == ["q4_k_m"]
    assert table.close_to("zzz") == []


def test_unknown_type_on_the_command_line(tiny_llama_f16_gguf: Path) -> None:
    code, _, err = run(str(tiny_llama_f16_gguf), "q4_km")
    assert code == 2
    assert "did you mean q4_k_m" in err and "shows all 39" in err
    assert "q2_k_s" not in err  # not every type any more


def test_list_shows_the_mix_measured_by_the_build() -> None:
    code, out, _ = run("--list", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    mix = {name: row["mix_bits_per_weight"] for name, row in rows.items()}
    # One block format, three mixes: the block's figure alone was 3.44 for all three.
    assert mix["Q3_K_S"] < mix["Q3_K_M"] < mix["Q3_K_L"]
    assert mix["Q4_K_S"] < mix["Q4_K_M"] and mix["Q3_K"] == mix["Q3_K_M"]
    assert rows["Q3_K_M"]["bits_per_weight"] == pytest.approx(3.4375)
    # The oracle: upstream's own help states each k-quant's file size for Llama-3-8B ("4.58G"),
    # the shape the reference header has; the measured mixes give those sizes to 1.5 %.
    params = sum(int(n) for n in _param_counts())
    checked = 0
    for name, row in rows.items():
        stated = re.match(r"\s*([\d.]+)G, [+-][\d.]+ ppl @ Llama-3-8B", row["note"])
        # Q2_K_S's line repeats Q2_K's "2.96G" in upstream's help (its mix is smaller)
        if stated and mix[name] and name != "Q2_K_S":
            size_gib = mix[name] * params / 8 / 2**30
            assert size_gib == pytest.approx(float(stated.group(1)), rel=0.015), name
            checked += 1
    assert checked == 14  # Q4_0 … Q8_0: every row that states a Llama-3-8B size
    code, text, _ = run("--list")
    assert "MIX" in text.splitlines()[0] and "Llama-3-8B-shaped" in text


def _param_counts() -> list[int]:
    counts = []
    for _, shape in REFERENCE.tensors():
        n = 1
        for d in shape:
            n *= d
        counts.append(n)
    return counts


def test_dry_run_sizes_the_outputs_and_writes_nothing(
    tiny_llama_f16_gguf: Path, tmp_path: Path
) -> None:
    code, out, err = run(str(tiny_llama_f16_gguf), "q4_k_m", "q8_0", "--outdir", str(tmp_path), "--dry-run", "--json")  # fmt: skip
    assert code == 0, err
    planned = {p["type"]: p for p in json.loads(out)}
    assert list(tmp_path.iterdir()) == []  # nothing written
    code, out, err = run(str(tiny_llama_f16_gguf), "q4_k_m", "q8_0", "--outdir", str(tmp_path), "--json")  # fmt: skip
    assert code == 0, err
    for made in json.loads(out):
        assert planned[made["type"]]["size"] == pytest.approx(made["size"], rel=0.01)
        assert planned[made["type"]]["bits_per_weight"] == pytest.approx(
            made["bits_per_weight"], abs=0.01
        )


def test_tensor_type_overrides_one_kind_of_tensor(
    tiny_llama_f16_gguf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    code, _, err = run(str(tiny_llama_f16_gguf), "q4_0", "-o", str(out), "--tensor-type", "attn_v=q8_0")  # fmt: skip
    assert code == 0, err
    kinds = {t.name: t.type_name for t in read_gguf(out, max_array_items=0).tensors}
    assert {k for n, k in kinds.items() if ".attn_v." in n} == {"Q8_0"}
    assert {k for n, k in kinds.items() if ".attn_q." in n} == {"Q4_0"}
    code, _, err = run(str(tiny_llama_f16_gguf), "q4_0", "--tensor-type", "attn_v")
    assert code == 2 and "NAME=TYPE" in err


def test_prune_layers_drops_blocks(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    source = read_gguf(tiny_llama_f16_gguf, max_array_items=0)
    blocks = source.metadata["llama.block_count"]
    out = tmp_path / "pruned.gguf"
    code, _, err = run(str(tiny_llama_f16_gguf), "q8_0", "-o", str(out), "--prune-layers", "0")
    assert code == 0, err
    pruned = read_gguf(out, max_array_items=0)
    assert pruned.metadata["llama.block_count"] == blocks - 1
    names = {t.name.split(".")[1] for t in pruned.tensors if t.name.startswith("blk.")}
    assert names == {str(i) for i in range(blocks - 1)}  # renumbered from 0
    code, _, err = run(str(tiny_llama_f16_gguf), "q8_0", "--prune-layers", "a,1")
    assert code == 2 and "layer numbers" in err


def test_keep_split_keeps_the_inputs_shards(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    from ggufkit.llamacpp.gguf_split import split_file

    split_file(tiny_llama_f16_gguf, tmp_path / "in", ["--split-max-tensors", "10"])
    shards = split_set(tmp_path / "in-00001-of-00003.gguf")
    assert len(shards) == 3
    out = tmp_path / "out" / "m-Q8_0.gguf"
    out.parent.mkdir()
    code, stdout, err = run(str(shards[0]), "q8_0", "-o", str(out), "--keep-split", "--json")
    assert code == 0, err
    first = Path(json.loads(stdout)[0]["output"])
    made = split_set(first)
    assert [p.name for p in made] == [f"m-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for mine, theirs in zip(made, shards, strict=True):  # the same tensors in each shard
        assert [t.name for t in GGUFReader(mine).tensors] == [
            t.name for t in GGUFReader(theirs).tensors
        ]
    assert {t.type_name for t in read_gguf(first, max_array_items=0).quantized_tensors} == {"Q8_0"}
    assert sorted(p.name for p in out.parent.iterdir()) == [p.name for p in made]  # no leftovers
    code, _, err = run(str(tiny_llama_f16_gguf), "q8_0", "--keep-split")
    assert code == 2 and "needs a split input" in err
