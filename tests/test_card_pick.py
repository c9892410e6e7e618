"""The card's "Which file to pick" and its metadata warnings, from measured numbers only."""

from __future__ import annotations

from pathlib import Path

from ggufkit.workspace.card import Artefact, missing_metadata
from ggufkit.workspace.card_pick import measured, pick_section, recommended, worth_their_size


def artefact(type_: str, size: int, **evals: float | bool | str) -> Artefact:
    step = "convert" if type_ == "F16" else "quantize"
    record = {"step": step, "size": size, "eval": {"corpus": "/c/wiki.txt", **evals}}
    return Artefact(Path(f"m-{type_}.gguf"), type_, record)


F16 = artefact("F16", 1000, is_baseline=True, ppl=10.0)


def test_the_smallest_file_without_a_real_loss_is_recommended() -> None:
    files = [
        F16,
        artefact("Q8_0", 530, kld_mean=4e-5, kld_ci=2e-6, delta_ppl=0.001, delta_ppl_ci=0.01),
        artefact("Q4_K_M", 300, kld_mean=0.01, kld_ci=0.001, delta_ppl=0.05, delta_ppl_ci=0.04),
        artefact("Q4_0", 290, kld_mean=0.03, kld_ci=0.002, delta_ppl=0.3, delta_ppl_ci=0.05),
    ]
    pick = recommended(files)
    assert pick is not None and pick.type == "Q4_K_M"  # +0.5 %: under 1 %; Q4_0 is +3 %
    text = pick_section(files)
    assert "Start with **`m-Q4_K_M.gguf`**" in text
    assert "`m-Q8_0.gguf` (Q8_0, 530 B, 53 % of f16): KLD 4.00e-05 ± 2.00e-06" in text
    assert "(no measurable perplexity loss)" in text and "perplexity +3.00 % of f16's" in text


def test_a_larger_file_no_closer_to_f16_is_called_out() -> None:
    files = [
        F16,
        artefact("Q4_0", 290, kld_mean=0.03, delta_ppl=0.3, delta_ppl_ci=0.05),
        artefact("Q4_1", 320, kld_mean=0.04, delta_ppl=0.4, delta_ppl_ci=0.05),
    ]
    front, dominated = worth_their_size(measured(files))
    assert [m.artefact.type for m in front] == ["Q4_0"]
    assert [(a.artefact.type, b.artefact.type) for a, b in dominated] == [("Q4_1", "Q4_0")]
    text = pick_section(files)
    assert "Not worth its size here: `m-Q4_1.gguf`" in text
    # every file loses more than 1 %: the closest to f16, said so
    assert "Start with **`m-Q4_0.gguf`**: the closest to f16 measured" in text


def test_nothing_measured_gives_no_section_and_no_pick() -> None:
    files = [F16, artefact("Q4_0", 290)]
    assert pick_section(files) == "" and recommended(files) is None


def test_missing_base_model_and_license_are_warned_on_the_card() -> None:
    both = missing_metadata([], None)
    assert len(both) == 2 and all(w.startswith("> [!WARNING]") for w in both)
    assert "--base-model REPO_ID" in both[0] and "license" in both[1]
    assert missing_metadata(["org/m"], "apache-2.0") == []
