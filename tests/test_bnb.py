"""ggufkit bnb: modes, the CPU defect guards of bitsandbytes 0.50, CUDA code paths (faked), runs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import tiny
import torch
from click.testing import CliRunner

from ggufkit.bnb import MODES, BnbOptions, guards, loading, markdown, measure, parse_modes, run_bnb
from ggufkit.bnb.modes import QuantSettings, default_compute_dtype, quantization_kwargs
from ggufkit.cli import cli
from ggufkit.core.errors import EvaluationError, UsageError

pytestmark = [pytest.mark.needs_torch, pytest.mark.needs_bnb]

FOUR_BIT = [m for m in MODES.values() if m.bits == 4]


def quick(**overrides: Any) -> BnbOptions:
    """Options for tiny models: 4 chunks of 64 tokens, one short run, one thread."""
    values: dict[str, Any] = dict(
        corpus=tiny.CORPUS, ctx=64, chunks=4, runs=1, max_new_tokens=4, threads=1
    )
    values["prompts"] = ["The history of the old town"]
    return BnbOptions(**{**values, **overrides})


@pytest.fixture(scope="module")
def odd_llama_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """Rows of 176 (not a multiple of 64) into down_proj, 176 outputs (not of 32) from gate/up."""
    return tiny.make_llama(
        tmp_path_factory.mktemp("llama-odd"),
        hidden=128,
        intermediate=176,
        kv_heads=2,
        spm_model=spm_model,
        seed=5,
    )


@pytest.fixture(scope="module")
def report64(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return run_bnb(tiny_llama_dir, quick(save=tmp_path_factory.mktemp("saved")))


@pytest.fixture(scope="module")
def report_odd(odd_llama_dir: Path) -> Any:
    return run_bnb(odd_llama_dir, quick())


# --- modes -------------------------------------------------------------------------------------


def test_parse_modes() -> None:
    assert [m.name for m in parse_modes(None)] == list(MODES)
    assert [m.name for m in parse_modes("int8, nf4,int8")] == ["int8", "nf4"]
    with pytest.raises(UsageError, match="q4"):
        parse_modes("nf4,q4")


def test_quantization_kwargs() -> None:
    settings = QuantSettings(compute_dtype="bf16", quant_storage="float16", int8_threshold=4.0)
    four = quantization_kwargs(MODES["nf4-dq"], settings, ["lm_head", "x"])
    assert four["load_in_4bit"] and four["bnb_4bit_use_double_quant"]
    assert four["bnb_4bit_quant_type"] == "nf4"
    assert four["bnb_4bit_compute_dtype"] == "bfloat16"
    assert four["bnb_4bit_quant_storage"] == "float16"
    assert four["llm_int8_skip_modules"] == ["lm_head", "x"]
    eight = quantization_kwargs(MODES["int8"], settings, [])
    assert eight["load_in_8bit"] and eight["llm_int8_threshold"] == 4.0
    assert "bnb_4bit_quant_type" not in eight
    with pytest.raises(UsageError):
        QuantSettings(quant_storage="int4")


# --- CUDA code paths, with torch.cuda faked ----------------------------------------------------


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.resolve_device("auto") == "cpu"
    with pytest.raises(UsageError, match="no CUDA"):
        loading.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert loading.resolve_device("auto") == "cuda:0"
    assert loading.resolve_device("cuda:1") == "cuda:1"


def test_device_map_and_compute_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loading.device_map("cpu", offload=False) == {"": "cpu"}
    assert loading.device_map("cuda:1", offload=False) == {"": 1}
    assert loading.device_map("cuda:0", offload=True) == "auto"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert default_compute_dtype("cuda:0") == "f16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert default_compute_dtype("cuda:0") == "bf16"
    assert default_compute_dtype("cpu") == "f32"


def test_cuda_memory_probe_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    def recorder(name: str, value: Any = None) -> Any:
        def call(device: Any = None) -> Any:
            calls.append((name, device))
            return value

        return call

    monkeypatch.setattr(torch.cuda, "empty_cache", recorder("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", recorder("reset"))
    monkeypatch.setattr(torch.cuda, "synchronize", recorder("sync"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", recorder("allocated", 6_450_000_000))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", recorder("reserved", 7_000_000_000))

    class Stub:
        def get_memory_footprint(self) -> int:
            return 5_720_000_000

        def named_modules(self) -> list[tuple[str, Any]]:
            return []

    probe = measure.MemoryProbe("cuda:1")
    probe.reset()
    stats = probe.read(Stub())
    assert ("reset", "cuda:1") in calls
    assert ("allocated", "cuda:1") in calls and ("reserved", "cuda:1") in calls
    assert stats.peak_allocated_bytes == 6_450_000_000
    assert stats.peak_reserved_bytes == 7_000_000_000
    assert stats.footprint_bytes == 5_720_000_000 and stats.peak_rss_bytes is None


def test_cuda_load_arguments(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from ggufkit.bnb.runner import _Session

    seen: dict[str, Any] = {}

    class Loaded:
        def eval(self) -> None:
            pass

    def fake_from_pretrained(path: Any, **kwargs: Any) -> Loaded:
        seen.update(kwargs)
        return Loaded()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    session = _Session(tiny_llama_dir, quick(fp32_cpu_offload=False), "cuda:1", "bf16")
    session.load(MODES["nf4"], ["lm_head"])
    assert seen["device_map"] == {"": 1} and seen["dtype"] == torch.bfloat16
    config = seen["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.llm_int8_skip_modules == ["lm_head"]
    assert session.base_skip == ["lm_head"]
    offload = _Session(tiny_llama_dir, quick(fp32_cpu_offload=True), "cuda:0", "f16")
    offload.load(MODES["int8"], [])
    assert seen["device_map"] == "auto"
    assert seen["quantization_config"].llm_int8_enable_fp32_cpu_offload


# --- CPU memory, log noise ---------------------------------------------------------------------


def test_peak_rss_reset() -> None:
    if not measure.CLEAR_REFS.exists():  # macOS, Windows: no reset, and it says so
        assert not measure.reset_peak_rss()
        return
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    high = measure.peak_rss()
    del block
    assert measure.reset_peak_rss()
    low = measure.peak_rss()
    assert high is not None and low is not None and high - low > 32 * 1024 * 1024


def test_int8_cast_warnings_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    noisy = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING), guards.quiet_bitsandbytes() as dropped:
        for _ in range(3):
            noisy.warning("MatMul8bitLt: inputs will be cast from %s to float16", "torch.float32")
        noisy.warning("something else")
    assert sum(dropped.values()) == 3
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    with caplog.at_level(logging.WARNING):
        noisy.warning("MatMul8bitLt: inputs will be cast from x to float16")
    assert len(caplog.records) == 2  # the filter is gone afterwards


# --- defect 2: CPU dequantize_4bit ---------------------------------------------------------------


@pytest.mark.parametrize("width", [64, 96, 128, 176, 200])
def test_dequantize_probe_matches_the_defect(width: int) -> None:
    """The probe flags a row width exactly when bitsandbytes' CPU dequantization is far worse
    than the reference on ordinary weights (0.24 instead of 0.09)."""
    weight = torch.randn(128, width, generator=torch.Generator().manual_seed(width)) * 0.05
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    ours = guards.reference_dequantize_4bit(packed, state)
    theirs = bnb.functional.dequantize_4bit(packed, state)
    ref_error = float((ours - weight).norm() / weight.norm())
    bnb_error = float((theirs - weight).norm() / weight.norm())
    assert 0.07 < ref_error < 0.12
    flagged = guards.dequantize_error(128, width, quant_type="nf4", blocksize=64)
    assert (flagged > guards.PROBE_TOLERANCE) == (bnb_error > 1.5 * ref_error)
    if width % 64 == 0:
        assert flagged < guards.PROBE_TOLERANCE


def test_plan_keeps_flagged_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards, "dequantize_error", lambda rows, cols, **kw: float(cols == 96))
    layers = [
        guards.LinearLayer("a.q", 128, 128),
        guards.LinearLayer("a.down", 96, 128),
        guards.LinearLayer("lm_head", 128, 800),
    ]
    plan = guards.plan_modules(layers, MODES["nf4"], base_skip=["lm_head"], device="cpu")
    assert plan.guarded == ["a.down"] and plan.skip == ["lm_head", "a.down"]
    assert plan.quantized == 1 and "96" in plan.notes[0]
    for mode, device in ((MODES["int8"], "cpu"), (MODES["nf4"], "cuda:0")):
        other = guards.plan_modules(layers, mode, base_skip=["lm_head"], device=device)
        assert other.guarded == [] and other.quantized == 2
    monkeypatch.setattr(guards, "dequantize_error", lambda rows, cols, **kw: 1.0)
    assert guards.plan_modules(layers, MODES["fp4"], base_skip=[], device="cpu").quantized == 0


def test_loaded_4bit_layers_compute_right(odd_llama_dir: Path) -> None:
    """With the plan applied, every 4-bit layer of the odd model computes x @ W_ref.T."""
    from ggufkit.bnb.runner import _Session

    session = _Session(odd_llama_dir, quick(), "cpu", "f32")
    plan = guards.plan_modules(
        session.layers, MODES["nf4"], base_skip=session.base_skip, device="cpu"
    )
    model = session.load(MODES["nf4"], plan.skip)
    guards.guard_fast_path(model)  # as measure() does
    quantized = guards.quantized_modules(model)
    assert quantized and not set(quantized) & set(plan.guarded)
    assert len(quantized) == plan.quantized
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    for name, module in quantized.items():
        inputs = x if module.in_features == 128 else torch.randn(3, module.in_features)
        # On CPUs with AVX512-BF16 the layers that keep bitsandbytes' fast path compute in bf16
        # (8 significant bits); the defects guarded against give errors of order 1.
        bf16 = getattr(module, "support_avx512bf16_for_cpu", False)
        with torch.inference_mode():
            expected = inputs @ guards.dequantized_weight(module).T
            got = module(inputs)
        error = float((got - expected).norm() / expected.norm())
        assert error < (1e-2 if bf16 else 1e-4), (name, error)


# --- defect 1: the AVX512-BF16 fast path ---------------------------------------------------------


def _linear4bit(inputs: int, outputs: int) -> Any:
    plain = torch.nn.Linear(inputs, outputs, bias=False)
    layer = bnb.nn.Linear4bit(
        inputs, outputs, bias=False, quant_type="nf4", compute_dtype=torch.float32
    )
    layer.load_state_dict(plain.state_dict())
    return layer.to("cpu").eval()


def test_fast_path_guard() -> None:
    model = torch.nn.ModuleDict({"odd": _linear4bit(128, 176), "even": _linear4bit(128, 64)})
    for layer in model.values():
        layer.support_avx512bf16_for_cpu = True  # as on an AVX512-BF16 CPU
    x = torch.randn(2, 128)
    with pytest.raises(AssertionError, match="divisible by block_n"), torch.inference_mode():
        model["odd"](x)
    model["odd"] = _linear4bit(128, 176)
    model["odd"].support_avx512bf16_for_cpu = True
    notes = guards.guard_fast_path(model)
    assert not model["odd"].support_avx512bf16_for_cpu
    assert model["even"].support_avx512bf16_for_cpu
    assert "odd" in notes[0] and "multiple of 32" in notes[0] and "bf16" in notes[1]
    with torch.inference_mode():
        got = model["odd"](x)
    expected = x @ guards.dequantized_weight(model["odd"]).T
    assert float((got - expected).norm() / expected.norm()) < 1e-4


# --- defect 3: save after a CPU forward; --save ------------------------------------------------


def _nf4(model_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    from ggufkit.bnb.runner import _Session

    session = _Session(model_dir, quick(), "cpu", "f32")
    model = session.load(MODES["nf4"], session.base_skip)
    return model, session.tokenizer, session.load_kwargs()


def test_save_reloads_to_the_same_logits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ggufkit.bnb.save import save_quantized

    model, tokenizer, kwargs = _nf4(tiny_llama_dir)
    ids = tokenizer("The old town", return_tensors="pt")["input_ids"]
    note = save_quantized(
        model,
        tokenizer,
        tmp_path / "nf4",
        source_dir=tiny_llama_dir,
        load_kwargs=kwargs,
        probe={"input_ids": ids},
    )
    assert "match" in note
    saved = tmp_path / "nf4"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.model").is_file()
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    reloaded = AutoModelForCausalLM.from_pretrained(saved, **kwargs)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_save_after_cpu_forward_is_caught(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Repack the weights as a CPU fast-path forward does: bitsandbytes then saves them corrupt."""
    from ggufkit.bnb.save import save_quantized, verify_saved

    model, tokenizer, kwargs = _nf4(tiny_llama_dir)
    ids = tokenizer("The old town", return_tensors="pt")["input_ids"]
    expected = guards.weight_fingerprint(model)
    for module in guards.quantized_modules(model).values():
        weight = module.weight
        weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
            weight.data, weight.quant_state
        )
    with pytest.raises(EvaluationError, match="repacked"):
        save_quantized(
            model,
            tokenizer,
            tmp_path / "out",
            source_dir=tiny_llama_dir,
            load_kwargs=kwargs,
            probe={"input_ids": ids},
        )
    assert not (tmp_path / "out").exists()
    model.save_pretrained(tmp_path / "naive")  # what a plain save_pretrained writes
    with pytest.raises(EvaluationError, match="differ from the quantized model"):
        verify_saved(
            model, tmp_path / "naive", expected, load_kwargs=kwargs, probe={"input_ids": ids}
        )


# --- whole runs --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["report64", "report_odd"])
def test_every_mode_runs_or_says_why(which: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(which)
    names = [r.name for r in report.results]
    assert names == ["baseline", *MODES]
    base = report.baseline
    assert base is not None and base.kld_mean is None and base.ppl and math.isfinite(base.ppl)
    for r in report.results:
        assert r.status in ("ok", "skipped"), (r.name, r.reason)
        if r.status == "skipped":
            assert r.reason
            continue
        assert r.tokens and r.tokens_per_s and r.load_s is not None and len(r.outputs) == 1
        assert r.footprint_bytes and r.peak_rss_bytes and r.ppl and math.isfinite(r.ppl)
        if r.name != "baseline":
            assert r.footprint_bytes < base.footprint_bytes
            assert r.kld_mean is not None and r.mean_abs_dlogit
    int8 = next(r for r in report.results if r.name == "int8")
    assert int8.top1_agreement >= 0.9
    # 8 bits lose far less than 4; NF4 suits normally distributed weights better than FP4 (QLoRA).
    kld = {r.name: r.kld_mean for r in report.results if r.status == "ok" and r.kld_mean}
    if "int8" in kld:
        assert all(kld["int8"] * 10 < v for n, v in kld.items() if n != "int8"), kld
    if "nf4" in kld and "fp4" in kld:
        assert kld["nf4"] < kld["fp4"], kld
    for name in ("nf4", "nf4-dq"):
        nf4 = next(r for r in report.results if r.name == name)
        assert 0.07 < nf4.weight_rel_error < 0.12
    by_name = {r.name: r for r in report.results}
    if which == "report64":  # the odd model's layers are too small for dq to pay off
        # double quantization shrinks the block scales, which get_memory_footprint() leaves out
        dq, plain = by_name["nf4-dq"], by_name["nf4"]
        assert dq.loaded_footprint_bytes < plain.loaded_footprint_bytes
        if any("undoing the double quantization" in n for n in dq.notes):
            # an AVX512-BF16 CPU: the first forward repacked both with bf16 scales
            assert dq.footprint_bytes != dq.loaded_footprint_bytes
        else:
            assert dq.footprint_bytes < plain.footprint_bytes
    text = markdown(report)
    assert "| int8" in text and "baseline (f32)" in text


def test_odd_model_guards_are_reported(report_odd: Any, odd_llama_dir: Path) -> None:
    flagged = (
        guards.dequantize_error(128, 176, quant_type="nf4", blocksize=64) > guards.PROBE_TOLERANCE
    )
    for r in report_odd.results:
        if r.name in {m.name for m in FOUR_BIT}:
            down = {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
            assert (down <= set(r.kept_layers)) == flagged
            assert any("dequantize_4bit" in n for n in r.notes) == flagged
    assert "lm_head" in next(r for r in report_odd.results if r.name == "int8").kept_layers


def test_saved_modes(report64: Any) -> None:
    for r in report64.results[1:]:
        assert r.saved_to and (Path(r.saved_to) / "model.safetensors").is_file()
        assert any("reloaded weights match" in n for n in r.notes)


# --- the command -------------------------------------------------------------------------------


def _args(model: Path, *extra: str) -> list[str]:
    return [
        "bnb", str(model), "--corpus", str(tiny.CORPUS), "--ctx", "64", "--chunks", "4",
        "--runs", "1", "--max-new-tokens", "2", "--threads", "1", "--prompt", "Hello", *extra,
    ]  # fmt: skip


def test_cli_json_and_skips(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards, "dequantize_error", lambda rows, cols, **kw: 1.0)
    result = CliRunner().invoke(cli, _args(tiny_llama_dir, "--modes", "int8,nf4", "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "ggufkit.bnb/1" and data["device"] == "cpu"
    status = {r["name"]: r for r in data["results"]}
    assert status["int8"]["status"] == "ok" and status["nf4"]["status"] == "skipped"
    assert "no layer left to quantize" in status["nf4"]["reason"]


def test_cli_usage_errors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    both = runner.invoke(cli, _args(tiny_llama_dir, "--prompts", str(prompts)))
    assert both.exit_code == 2 and "not both" in both.output
    assert runner.invoke(cli, _args(tiny_llama_dir, "--device", "tpu")).exit_code == 2
    if not torch.cuda.is_available():
        cuda = runner.invoke(cli, _args(tiny_llama_dir, "--device", "cuda"))
        assert cuda.exit_code == 2 and "no CUDA" in cuda.output


def test_remote_code_needs_the_flag(tmp_path: Path) -> None:
    config = {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "m.Model"}}
    assert "built-in llama" in loading.check_remote_code(tmp_path, config, trust=False)[0]
    custom = {**config, "model_type": "my-chat-model"}
    with pytest.raises(UsageError, match="own Python code") as caught:
        loading.check_remote_code(tmp_path, custom, trust=False)
    assert "--trust-remote-code" in (caught.value.hint or "")
    assert "--trust-remote-code" in loading.check_remote_code(tmp_path, custom, trust=True)[0]
    assert loading.check_remote_code(tmp_path, {"model_type": "llama"}, trust=False) == []
    (tmp_path / "config.json").write_text(json.dumps(custom))
    result = CliRunner().invoke(cli, ["bnb", str(tmp_path)])
    assert result.exit_code == 2 and "--trust-remote-code" in result.output


def test_workspace_run_is_recorded(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from ggufkit.workspace import init_workspace
    from ggufkit.workspace.manifest import Manifest

    shutil.copytree(tiny_llama_dir, tmp_path / "tiny")
    init_workspace(tmp_path, "tiny", name="tiny")
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "out" / "bnb"
    args = _args(tmp_path / "tiny", "--modes", "int8", "--save", str(saved))
    result = CliRunner().invoke(cli, [a for a in args if a != str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "tiny-bnb.json").read_text())
    assert [r["name"] for r in report["results"]] == ["baseline", "int8"]
    artefacts = Manifest.load(tmp_path / "out" / "manifest.json").artefacts
    record = artefacts["tiny-bnb.json"]
    assert record["step"] == "bnb" and record["inputs"][0]["files"]
    modes = record["eval"]["bnb"]["modes"]
    assert modes["int8"]["top1_agreement"] == report["results"][1]["top1_agreement"]
    assert artefacts["bnb/int8"]["step"] == "bnb-save" and artefacts["bnb/int8"]["eval"]["bnb"]
