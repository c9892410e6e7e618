"""`ggufkit batch` on this machine: the embedded models × 3 types give the same bytes as the
commands run by hand; a re-run builds nothing; eval results land in each model's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_reference import TYPES, batch_digests, by_hand, partial_files, write_plan
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.workspace.manifest import Manifest

pytestmark = [pytest.mark.needs_llamacpp, pytest.mark.slow]


def test_local_batch_matches_the_commands_by_hand(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, extra="[eval]\nctx = 128\nchunks = 2\n")
    out = tmp_path / "out"
    expected = by_hand(out)
    assert len(expected) == 3 * (2 + len(TYPES))
    result = CliRunner().invoke(cli, ["batch", str(plan), "--json", "-j", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["where"] == "local"
    assert {m["model"] for m in summary["models"]} == {"tiny-llama", "milton", "tiny-bloom"}
    assert {s["status"] for s in summary["steps"]} == {"built"}
    assert len(summary["steps"]) == 3 * (1 + 1 + len(TYPES) + 1)
    assert batch_digests(out) == expected
    assert partial_files(out) == []
    # Each model's manifest: every file recorded, the eval numbers beside the quantized files.
    manifest = Manifest.load(out / "milton" / "manifest.json")
    assert manifest.get(out / "milton" / "milton-Q4_0.gguf")["step"] == "quantize"  # type: ignore[index]
    record = manifest.get(out / "milton" / "milton-Q8_0.gguf")
    q4_record = manifest.get(out / "milton" / "milton-Q4_0.gguf")
    assert record is not None and q4_record is not None and record["eval"]["ppl"] > 1
    assert 0 < record["eval"]["kld_mean"] < q4_record["eval"]["kld_mean"]  # 8 bits lose less than 4
    assert (out / "batch-summary.md").read_text(encoding="utf-8").count("| ok |") == 3

    again = CliRunner().invoke(cli, ["batch", str(plan), "--json"])
    assert again.exit_code == 0, again.output
    assert {s["status"] for s in json.loads(again.stdout)["steps"]} == {"up to date"}
    assert batch_digests(out) == expected

    # A lost file is made again, alone: the same bytes, so the eval (its inputs by sha256) stays.
    (out / "tiny-bloom" / "tiny-bloom-Q5_0.gguf").unlink()
    third = json.loads(CliRunner().invoke(cli, ["batch", str(plan), "--json"]).stdout)
    built = [s["step"] for s in third["steps"] if s["status"] == "built"]
    assert built == ["tiny-bloom:quantize:q5_0"]
    assert batch_digests(out) == expected


def test_a_broken_model_is_named_and_the_others_finish(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    plan = write_plan(tmp_path, models=("tiny-bloom",), extra=f'[[models]]\nsource = "{broken}"\n')
    # [[models]] after [imatrix] would belong to it in TOML; put the table list first instead.
    text = plan.read_text(encoding="utf-8")
    head, _, tail = text.partition("[imatrix]")
    model, _, rest = tail.partition("[[models]]")
    plan.write_text(head + "[[models]]" + rest + "[imatrix]" + model, encoding="utf-8")
    result = CliRunner().invoke(cli, ["batch", str(plan)])
    assert result.exit_code == 1
    assert "1 model(s) failed: broken" in result.output
    summary = json.loads((tmp_path / "out" / "batch-summary.json").read_text(encoding="utf-8"))
    rows = {m["model"]: m for m in summary["models"]}
    assert rows["tiny-bloom"]["status"] == "ok" and rows["tiny-bloom"]["steps"] == {"built": 5}
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"].startswith("convert: ")
    assert "NoSuchForCausalLM" in rows["broken"]["error"]
    assert rows["broken"]["steps"] == {"failed": 1, "skipped": 4}


def test_a_hub_model_is_downloaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubserver import serving

    from ggufkit.data import embedded_model

    folder = embedded_model("tiny-bloom")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    plan = tmp_path / "batch.toml"
    plan.write_text('types = ["q8_0"]\n[[models]]\nsource = "acme/tiny-bloom"\n', encoding="utf-8")
    with serving(monkeypatch, tmp_path / "hf-home") as hub:
        hub.add_repo("acme/tiny-bloom", {"main": files})
        first = CliRunner().invoke(cli, ["batch", str(plan), "--json"])
        assert first.exit_code == 0, first.output
        steps = {s["step"]: s["status"] for s in json.loads(first.stdout)["steps"]}
        assert steps == {
            "tiny-bloom:download": "built",
            "tiny-bloom:convert": "built",
            "tiny-bloom:quantize:q8_0": "built",
        }
        assert len(hub.gets("model.safetensors")) == 1
        again = CliRunner().invoke(cli, ["batch", str(plan), "--json"])
        assert {s["status"] for s in json.loads(again.stdout)["steps"]} == {"up to date"}
        assert len(hub.gets("model.safetensors")) == 1  # not fetched again
