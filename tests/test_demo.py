"""`ggufkit demo`: the whole pipeline on the embedded models, end to end.

One demo run (module-scoped: convert, quantize, eval, bnb, run) serves every end-to-end assertion;
the tests at the bottom re-run it in the same directory to check that finished steps are reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.bnb.image_results import RANDOM_WEIGHTS
from ggufkit.cli import cli
from ggufkit.data import (
    default_corpus,
    embedded_adapter,
    embedded_model,
    embedded_text,
    milton_corpus,
)
from ggufkit.demo import MODELS, TYPES, DemoResult, DemoSettings, ModelRun, markdown, run_demo
from ggufkit.demo.lora import COLUMNS, ROUTES, Answer, Check, LoraRun
from ggufkit.demo.vision import RUNS as IMAGE_RUNS
from ggufkit.evaluate import EvalReport, ModelResult
from ggufkit.inference.verify import UNQUANTIZED_MAX_REL_DIFF

FAMILIES = [m.name for m in MODELS]
LABELS = ["F16", *(t.upper() for t in TYPES)]
LORA_SECTION = "tiny-llama + a LoRA adapter"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_row(markdown_text: str, section: str, measure: str) -> dict[str, str]:
    """The cells of one row of the eval table under ``## <section> (``, by column header."""
    block = markdown_text.split(f"## {section} (", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    lines = lines[next(i for i, line in enumerate(lines) if "| Measure " in line) :]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[1] == measure:
            return dict(zip(header, cells, strict=True))
    raise AssertionError(f"no {measure!r} row under {section}")


# --- without llama.cpp ----------------------------------------------------------------------


def test_help_says_what_the_demo_does() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    for text in ("q4_0", "Milton", "--outdir", "--no-bnb", "--force", "manifest.json", "picture"):
        assert text in result.output


def test_without_a_build_the_demo_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GGUFKIT_BUILD_DIR", raising=False)
    result = CliRunner().invoke(cli, ["demo", "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "ggufkit build" in result.output
    assert not (tmp_path / "out").exists()  # nothing converted before the check


def test_an_outdir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--outdir", str(target)])
    assert result.exit_code == 2, result.output
    assert "is a file" in result.output


def test_markdown_states_each_types_perplexity_cost() -> None:
    def model(label: str, ppl: float) -> ModelResult:
        return ModelResult(
            label, f"m-{label}.gguf", label, "m", 1000, 100, 8.0, label == "F16", ppl
        )

    report = EvalReport("c.txt", "0" * 64, 5000, 256, 16, "m-F16.gguf", "abc")
    report.models = [model("F16", 20.0), model("Q8_0", 20.02), model("Q4_0", 21.0)]
    run = ModelRun("m", "about", {}, Path("m-eval.json"), report, plot=Path("out/m-eval.png"))
    assert run.ppl_change() == pytest.approx({"Q8_0": 0.001, "Q4_0": 0.05})
    text = markdown(DemoResult(Path("out"), DemoSettings(), models=[run]))
    assert "Perplexity against F16 (± a paired 95 % interval): Q8_0 +0.10%, Q4_0 +5.00%." in text
    report.models[1].delta_ppl, report.models[1].delta_ppl_ci = 0.02, 0.04  # covers 0
    report.models[2].delta_ppl, report.models[2].delta_ppl_ci = 1.0, 0.1
    text = markdown(DemoResult(Path("out"), DemoSettings(), models=[run]))
    assert "Q8_0 +0.10% ± 0.20% (no measurable change), Q4_0 +5.00% ± 0.50%." in text
    assert table_row(text, "m", "perplexity")["Q4_0"] == "21.0000"
    assert "](m-eval.png)" in text  # the plot is shown where the table is, beside it on disk


def test_the_lora_section_shows_three_answers_verify_and_the_table() -> None:
    def model(name: str, ppl: float, baseline: bool) -> ModelResult:
        return ModelResult(
            name, f"{name}.gguf", "F16", "tiny-llama", 1000, 100, 16.0, baseline, ppl
        )

    report = EvalReport("heldout-milton.txt", "0" * 64, 5000, 256, 16, "base.gguf", "abc")
    report.models = [model("base", 105.0, True), model("merged", 99.0, False)]
    adapter = EvalReport("heldout-milton.txt", "0" * 64, 5000, 256, 16, "base.gguf", "abc")
    adapter.models = [model("base", 98.5, True)]
    run = LoraRun(Path("a"), Path("b.gguf"), Path("m.gguf"), None, "So spake")
    run.answers = {
        "adapter": Answer("adapter", " the Angel", 2, ["ggufkit", "run", "b.gguf", "--lora", "x"]),
        "merged": Answer("merged", " the Angel", 2, ["ggufkit", "run", "m.gguf"]),
        "peft": Answer("peft", " the Angels", 2),
    }
    run.checks = {"merged": Check("merged", 0.0002, 1.0, 0.01, True, 128, Path("v.json"))}
    run.report, run.adapter_report = report, adapter
    text = markdown(DemoResult(Path("out"), DemoSettings(), lora=run))
    section = text.split(f"## {LORA_SECTION} (", 1)[1]
    for route in ROUTES.values():
        assert route in section
    assert "`ggufkit run b.gguf --lora x`" in section and "    So spake the Angel" in section
    # The first two differ from PEFT's answer only after "the Angel" (10 characters).
    assert "Against PEFT's answer: base F16 + adapter GGUF: the same for 10 characters" in section
    assert "| 0.020% (limit 1%, PASS) | 100.0% of 128 |" in section
    row = table_row(text, LORA_SECTION, "perplexity")
    assert [row[c] for c in COLUMNS.values()] == ["105.0000", "99.0000", "98.5000"]
    # base + adapter is a run of its own: not shown as the baseline of the table.
    assert table_row(text, LORA_SECTION, "ΔPPL vs baseline")[COLUMNS["adapter"]] != "(baseline)"


# --- the whole demo, once -------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoResult]:
    # The demo compares bitsandbytes too; `make install` installs it, so its absence fails here.
    import bitsandbytes  # noqa: F401
    import torch  # noqa: F401

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GGUFKIT_NO_PROGRESS", "1")
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        yield run_demo(tmp_path_factory.mktemp("demo") / "out", bnb=True)


@pytest.mark.slow
@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.needs_bnb
class TestWholeDemo:
    @pytest.mark.parametrize("family", FAMILIES)
    def test_q4_0_costs_perplexity_and_q8_0_keeps_it(self, demo: DemoResult, family: str) -> None:
        run = next(r for r in demo.models if r.name == family)
        ppl = {m.type: m.ppl for m in run.report.models}
        assert set(ppl) == set(LABELS)
        assert all(value is not None and value > 1 for value in ppl.values())
        f16, q8, q4 = ppl["F16"], ppl["Q8_0"], ppl["Q4_0"]
        assert f16 is not None and q8 is not None and q4 is not None
        assert q4 > f16, f"{family}: Q4_0 {q4} is not above F16 {f16}"
        assert abs(q8 - f16) / f16 < 0.01, f"{family}: Q8_0 {q8} is not within 1% of F16 {f16}"
        assert all(m.kld_mean is not None for m in run.report.models if not m.is_baseline)
        model = next(m for m in MODELS if m.name == family)
        assert run.report.corpus_sha256 == sha256(embedded_text(model.corpus))

    @pytest.mark.parametrize("family", FAMILIES)
    def test_each_q4_0_file_generates_text(self, demo: DemoResult, family: str) -> None:
        run = next(r for r in demo.models if r.name == family)
        assert run.sample is not None and run.sample.model == run.files["Q4_0"]
        assert run.sample.tokens > 0
        assert len(run.sample.text.split()) >= 3, run.sample.text

    def test_results_are_written_and_the_table_parses(self, demo: DemoResult) -> None:
        data = json.loads(demo.results_json.read_text(encoding="utf-8"))
        assert data["schema"] == "ggufkit.demo/1"
        text = demo.results_md.read_text(encoding="utf-8")
        for family in FAMILIES:
            row = table_row(text, family, "perplexity")
            assert [key for key in row if key in LABELS] == LABELS
            recorded = {m["type"]: m["ppl"] for m in data["models"][family]["eval"]["models"]}
            for label in LABELS:
                shown = float(row[label].split("±")[0])
                assert shown == pytest.approx(recorded[label], abs=1e-4)
            assert row["Model"] == family  # the merged model, not the name of its delta
        for path in [*(r.plot for r in demo.models), demo.compare_plot]:
            assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({path.name})" in text and path.parent == demo.results_md.parent

    def test_bitsandbytes_sits_beside_gguf(self, demo: DemoResult) -> None:
        assert demo.comparison is not None and demo.bnb_json is not None
        rows = {(r.family, r.name): r for r in demo.comparison.rows}
        assert {("GGUF", label) for label in LABELS} <= set(rows)
        assert {("bnb", "baseline"), ("bnb", "nf4"), ("bnb", "int8")} <= set(rows)
        assert all(r.ppl is not None for r in rows.values())
        # Same corpus, context and chunks: the notes raise no comparability warning.
        assert not any("differ" in note for note in demo.comparison.notes), demo.comparison.notes
        assert "## bitsandbytes beside GGUF" in demo.results_md.read_text(encoding="utf-8")

    def test_one_image_question_through_both_paths(self, demo: DemoResult) -> None:
        vision = demo.vision
        assert vision is not None and not vision.skipped and vision.report is not None
        rows = {row.name: row for row in vision.report.rows}
        assert list(rows) == ["baseline", "nf4-dq", "gguf"]
        for row in rows.values():
            assert row.ok and row.answer, (row.name, row.reason)
            assert row.runs == IMAGE_RUNS and row.tokens and row.gen_s
            # llama-mtmd-cli's peak RSS is read from /proc while it runs
            assert row.peak_rss_bytes or (row.kind == "llama.cpp" and not Path("/proc").is_dir())
        assert vision.gguf is not None and vision.mmproj is not None
        pair = rows["gguf"]
        assert pair.size_bytes == vision.gguf.stat().st_size + vision.mmproj.stat().st_size
        assert rows["nf4-dq"].footprint_bytes < rows["baseline"].footprint_bytes  # type: ignore[operator]
        assert RANDOM_WEIGHTS in vision.report.notes  # its answers are noise, and it says so
        text = demo.results_md.read_text(encoding="utf-8")
        section = text.split("## One question about a picture (", 1)[1].split("\n## ", 1)[0]
        assert "| gguf" in section and "| nf4-dq" in section and "noise" in section
        artefacts = json.loads(demo.manifest.read_text(encoding="utf-8"))["artefacts"]
        record = artefacts[vision.report_json.name]  # type: ignore[union-attr]
        assert record["command"][:2] == ["ggufkit", "bnb"] and "--image" in record["command"]
        roles = {i["role"] for i in record["inputs"]}
        assert {"picture", "model", "mmproj"} <= roles
        assert artefacts[vision.gguf.name]["command"][:2] == ["ggufkit", "convert"]

    def test_the_adapter_answers_three_ways(self, demo: DemoResult) -> None:
        lora = demo.lora
        assert lora is not None and not lora.skipped, lora and lora.skipped
        assert set(lora.answers) == set(ROUTES)
        for answer in lora.answers.values():
            assert answer.tokens > 0 and len(answer.text.split()) >= 3, answer
        adapter, merged = lora.answers["adapter"].command, lora.answers["merged"].command
        assert adapter is not None and adapter[:2] == ["ggufkit", "run"] and "--lora" in adapter
        assert merged is not None and "--lora" not in merged
        text = demo.results_md.read_text(encoding="utf-8")
        section = text.split(f"## {LORA_SECTION} (", 1)[1].split("\n## ", 1)[0]
        for answer in lora.answers.values():
            assert (lora.prompt + answer.text).strip().splitlines()[0] in section
        assert lora.agreement() in section

    @pytest.mark.parametrize("route", ["adapter", "merged"])
    def test_the_adapter_gguf_and_the_merged_gguf_compute_what_peft_computes(
        self, demo: DemoResult, route: str
    ) -> None:
        assert demo.lora is not None
        check = demo.lora.checks[route]  # verify, against PEFT in transformers
        assert check.passed and check.limit == UNQUANTIZED_MAX_REL_DIFF
        assert check.rel_diff <= UNQUANTIZED_MAX_REL_DIFF
        assert check.argmax_agreement == 1.0 and check.positions > 100
        data = json.loads(check.json.read_text(encoding="utf-8"))
        assert "+ PEFT adapter" in data["against"] and data["passed"]

    def test_the_adapter_learned_milton_and_the_table_shows_it(self, demo: DemoResult) -> None:
        lora = demo.lora
        assert lora is not None and lora.report is not None and lora.adapter_report is not None
        assert lora.report.corpus_sha256 == sha256(milton_corpus())
        assert lora.adapter_report.corpus_sha256 == sha256(milton_corpus())
        base, merged = lora.report.models
        (adapter,) = lora.adapter_report.models
        assert base.ppl and merged.ppl and adapter.ppl
        # Run-time adapter and merged weights: the same perplexity on the same chunks.
        assert adapter.ppl == pytest.approx(merged.ppl, rel=1e-3)
        # Fine-tuned on Paradise Lost: better on Paradise Regained, beyond the paired interval.
        assert merged.delta_ppl is not None and merged.delta_ppl_ci is not None
        assert merged.delta_ppl + merged.delta_ppl_ci < 0, (merged.delta_ppl, merged.delta_ppl_ci)
        row = table_row(demo.results_md.read_text(encoding="utf-8"), LORA_SECTION, "perplexity")
        shown = [float(row[c].split("±")[0]) for c in COLUMNS.values()]
        assert shown == pytest.approx([base.ppl, merged.ppl, adapter.ppl], abs=1e-4)
        data = json.loads(demo.results_json.read_text(encoding="utf-8"))["lora"]
        assert set(data["answers"]) == set(ROUTES) and data["eval"]["corpus"] == str(
            milton_corpus()
        )

    def test_manifest_names_the_inputs(self, demo: DemoResult) -> None:
        artefacts = json.loads(demo.manifest.read_text(encoding="utf-8"))["artefacts"]
        merged = artefacts["tiny-llama-milton-F16.gguf"]
        roles = {i["role"]: i for i in merged["inputs"]}
        assert set(roles) == {"base", "delta"}
        assert roles["base"]["path"] == str(embedded_model("tiny-llama"))
        weights = embedded_model("tiny-llama-milton-delta") / "model.safetensors"
        assert roles["delta"]["files"]["model.safetensors"] == sha256(weights)
        for family in FAMILIES:
            for label in LABELS:
                name = f"{family}-{label}.gguf"
                record = artefacts[name]
                assert record["sha256"] == sha256(demo.outdir / name)
                assert record["eval"]["ppl"] > 1  # the eval results are recorded with the file
            evaluation = artefacts[f"{family}-eval.json"]
            corpus = next(i for i in evaluation["inputs"] if i["role"] == "corpus")
            expected = milton_corpus() if family == "tiny-llama-milton" else default_corpus()
            assert corpus["sha256"] == sha256(expected)
        assert artefacts["tiny-llama-bnb.json"]["eval"]["bnb"]["modes"]["nf4"]["status"] == "ok"
        adapter_files = embedded_adapter("tiny-llama-milton-lora")
        adapter_sha = sha256(adapter_files / "adapter_model.safetensors")
        for name, command in [
            ("tiny-llama-lora-merged-F16.gguf", ["ggufkit", "convert"]),
            ("tiny-llama-milton-lora-F16-LoRA.gguf", ["ggufkit", "convert-lora"]),
            ("tiny-llama-milton-lora-verify-adapter.json", ["ggufkit", "verify"]),
        ]:
            record = artefacts[name]
            assert record["command"][:2] == command
            lora_input = next(i for i in record["inputs"] if i["role"] == "lora")
            assert lora_input["files"]["adapter_model.safetensors"] == adapter_sha
        verified = {i["role"]: i for i in artefacts[name]["inputs"]}["lora_gguf"]
        assert verified["sha256"] == artefacts["tiny-llama-milton-lora-F16-LoRA.gguf"]["sha256"]

    def test_cli_reuses_everything_and_ends_with_the_tables(self, demo: DemoResult) -> None:
        result = CliRunner().invoke(cli, ["demo", "--outdir", str(demo.outdir)])
        assert result.exit_code == 0, result.output
        assert re.search(r"\(0 steps run, \d+ up to date and reused\)", result.output), (
            result.output
        )
        assert "manifest.json" in result.output and "Samples (Q4_0" in result.output
        last_section = result.output.rsplit("\n## ", 1)[1]
        assert last_section.startswith("bitsandbytes beside GGUF")

    def test_a_missing_file_is_rebuilt_alone(self, demo: DemoResult) -> None:
        victim = demo.outdir / "tiny-bloom-Q4_K_M.gguf"
        before = sha256(victim)
        victim.unlink()
        again = run_demo(demo.outdir, bnb=True)
        built = [s.output.name for s in again.steps if not s.skipped]
        # Quantization is deterministic: the same bytes again, so the eval stays up to date.
        assert built == [victim.name]
        assert sha256(victim) == before
