"""`ggufkit publish`: a workspace's files and a generated card (checked with huggingface_hub's
ModelCard) to the fake Hub, over real HTTP with Xet off (see tests/test_upload.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hubserver import FakeHub
from test_upload import TOKEN, hub  # noqa: F401  (the fixture)

from ggufkit.cli import cli
from ggufkit.workspace.card import CHAT_NAME_KEY, modelfile

SOURCE_CARD = "---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny\n"


def test_the_modelfile_carries_the_fastchat_prompt() -> None:
    text = modelfile("m-Q4_0.gguf", {CHAT_NAME_KEY: "vicuna_v1.1"})
    assert text.startswith("FROM ./m-Q4_0.gguf\n")
    assert " USER: {{ .Prompt }} ASSISTANT:" in text and "{{ else }}A chat between" in text
    assert 'PARAMETER stop "USER:"' in text
    assert modelfile("m.gguf", {}) == "FROM ./m.gguf\n"


@pytest.mark.needs_llamacpp
def test_publish_a_workspace(
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import ModelCard

    from ggufkit.data import embedded_model

    shutil.copytree(embedded_model("tiny-llama"), tmp_path / "tiny")
    (tmp_path / "tiny" / "README.md").write_text(SOURCE_CARD)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (
        ["init", "./tiny"],
        ["convert"],
        ["quantize", "q4_0", "q8_0"],
        ["eval", "--chunks", "2", "--bench-prompt", "32", "--bench-gen", "8", "--bench-reps", "1"],
    ):
        done = runner.invoke(cli, args)
        assert done.exit_code == 0, (args, done.output)
    names = ["tiny-F16.gguf", "tiny-Q8_0.gguf", "tiny-Q4_0.gguf"]

    dry = runner.invoke(cli, ["publish", "me/tiny-GGUF", "--dry-run", "--base-model", "me/tiny"])
    assert dry.exit_code == 0, dry.output
    assert hub.requests == []
    head, card_text = dry.stdout.split("\n--- README.md ---\n")
    assert all(name in head for name in names) and "total: " in head
    card = ModelCard(card_text)
    assert card.data.base_model == ["me/tiny"]
    assert card.data.base_model_relation == "quantized"
    assert card.data.tags == ["gguf", "llama-cpp", "llama"]
    assert card.data.license == "apache-2.0"  # copied from the source's card
    rows = [line for line in card.text.splitlines() if line.startswith("| `tiny-")]
    assert [row.split("`")[1] for row in rows] == names
    for row in rows:  # size, bpw, ppl, ΔPPL and KLD with 95 % intervals, two speeds: measured
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "–" not in cells, row
        assert all(" ± " in cell for cell in cells[4:9] if cell != "baseline"), row
    assert [c.strip() for c in rows[0].split("|")[6:8]] == ["baseline", "baseline"]
    assert "Measured on " in card.text and "heldout.txt" in card.text
    assert "half-width of a 95 % interval" in card.text and "lower is better" in card.text
    assert "llama.cpp commit: `" in card.text and "ggufkit version: `" in card.text
    assert "[!WARNING]" not in card.text  # base_model and license are both there
    # the pick comes from the table: Q8_0 is the closest to f16 on this corpus
    pick = card.text.split("## Which file to pick")[1].split("##")[0]
    assert "`tiny-Q4_0.gguf`" in pick and "`tiny-Q8_0.gguf`" in pick and "Start with **`" in pick
    chosen = pick.split("Start with **`")[1].split("`")[0]
    assert f"llama-cli -hf me/tiny-GGUF:{chosen.split('-')[1][:-5]}" in card.text
    assert f"ollama run hf.co/me/tiny-GGUF:{chosen.split('-')[1][:-5]}" in card.text
    assert f'filename="{chosen}"' in card.text and f"FROM ./{chosen}" in card.text
    modelfile_text = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile_text.startswith(f"FROM ./{chosen}\n") and modelfile_text in card.text
    assert 'PARAMETER stop "</s>"' in modelfile_text  # the file's EOS token
    assert "![" in card.text and "](tiny-eval.png)" in card.text
    assert (tmp_path / "out" / "tiny-eval.png").read_bytes()[:4] == b"\x89PNG"

    for _ in range(2):  # the second run finds everything there and sends nothing
        done = runner.invoke(cli, ["publish", "me/tiny-GGUF", "--token", TOKEN, "--base-model", "me/tiny"])  # fmt: skip
        assert done.exit_code == 0, done.output
    assert len(hub.commits) == 1 and len(hub.stored) == 3
    files = hub.files("me/tiny-GGUF")
    assert sorted(files) == sorted([*names, "README.md", "Modelfile", "tiny-eval.png"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["artefacts"]["Modelfile"]["step"] == "publish"
    for name in names:
        assert files[name] == (tmp_path / "out" / name).read_bytes()
    assert files["README.md"].decode() == card_text.rstrip("\n") + "\n"
    assert TOKEN not in files["README.md"].decode()

    with (tmp_path / "out" / "tiny-Q4_0.gguf").open("ab") as handle:
        handle.write(b"\0" * 32)  # its numbers no longer describe it: refused, not published
    changed = runner.invoke(cli, ["publish", "me/tiny-GGUF", "--dry-run"])
    assert changed.exit_code == 1 and "tiny-Q4_0.gguf changed since it was made" in changed.output


@pytest.mark.needs_llamacpp
def test_a_hub_source_gives_base_model_license_and_revision(
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import ModelCard

    from ggufkit.data import embedded_model

    model = embedded_model("tiny-llama")
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    repo = hub.add_repo("org/tiny", {"main": {**files, "README.md": SOURCE_CARD.encode()}})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["init", "org/tiny"], ["quantize", "q8_0"]):
        done = runner.invoke(cli, args)
        assert done.exit_code == 0, (args, done.output)
    dry = runner.invoke(cli, ["publish", "me/tiny-GGUF", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    card = ModelCard(dry.stdout.split("\n--- README.md ---\n")[1])
    assert card.data.base_model == ["org/tiny"] and card.data.license == "apache-2.0"
    assert f"`org/tiny` at revision `{repo.revisions['main'].sha}`" in card.text
    assert "Not measured yet" in card.text  # no eval run: the card says so, no made-up numbers
