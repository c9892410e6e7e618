"""``run_bnb``: the baseline and each bitsandbytes mode, loaded in turn and measured alike."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ggufkit.bnb import guards
from ggufkit.bnb.loading import device_map, device_name, skeleton, start, versions
from ggufkit.bnb.measure import (
    BaselineLogits,
    MemoryProbe,
    MemoryStats,
    Windows,
    make_windows,
    score,
    time_generation,
    tokenize_corpus,
    weight_error,
)
from ggufkit.bnb.modes import (
    MODES,
    Mode,
    QuantSettings,
    default_compute_dtype,
    quantization_config,
    torch_dtype,
)
from ggufkit.bnb.results import BASELINE, BnbReport, ModeResult, Quality
from ggufkit.core.errors import EvaluationError, InputError, UsageError
from ggufkit.core.fsutil import human_bytes, sha256_file
from ggufkit.core.log import get_logger
from ggufkit.formats.hfconfig import load_config
from ggufkit.hub import ResolvedModel

log = get_logger("bnb")

DEFAULT_PROMPTS = (
    "The history of the old town begins",
    "Here is a short story about a lighthouse keeper:",
)


@dataclass
class BnbOptions:
    modes: Sequence[Mode] = tuple(MODES.values())
    compute_dtype: str | None = None  # f32/f16/bf16; None: bf16 or f16 on CUDA, f32 on CPU
    quant_storage: str = "uint8"
    skip_modules: Sequence[str] = ()
    int8_threshold: float = 6.0
    fp32_cpu_offload: bool = False
    prompts: Sequence[str] = DEFAULT_PROMPTS
    runs: int = 3
    max_new_tokens: int = 32
    save: Path | None = None  # each mode goes to save/<mode>
    trust_remote_code: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    corpus: Path | None = None  # None: ggufkit's default corpus
    quality: bool = True
    ctx: int | None = None
    chunks: int | None = None
    seed: int = 0
    threads: int | None = None  # torch CPU threads (process-wide); None: torch's default
    tmp_dir: Path | None = None
    extra_notes: list[str] = field(default_factory=list)


class _Session:
    """Everything the modes share: model, tokenizer, corpus windows and the baseline's logits."""

    def __init__(self, model_dir: Path, options: BnbOptions, device: str, compute: str) -> None:
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.options = options
        self.device = device
        self.settings = QuantSettings(
            compute_dtype=compute,
            quant_storage=options.quant_storage,
            int8_threshold=options.int8_threshold,
            fp32_cpu_offload=options.fp32_cpu_offload,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=options.trust_remote_code
        )
        self.windows: Windows | None = None
        self.baseline: BaselineLogits | None = None
        self.baseline_outputs: list[str] = []
        from transformers import AutoModelForCausalLM

        # Linear layers and default skips, from the model built on the meta device
        self.layers, self.base_skip = skeleton(
            model_dir,
            AutoModelForCausalLM,
            trust_remote_code=options.trust_remote_code,
            skip_modules=options.skip_modules,
        )
        self.n_params: int | None = None

    def plan(self, mode: Mode) -> guards.ModulePlan:
        return guards.plan_modules(
            self.layers,
            mode,
            base_skip=self.base_skip,
            device=self.device,
            quant_storage=self.settings.quant_storage,
        )

    def load_kwargs(self) -> dict[str, Any]:
        return {
            "dtype": torch_dtype(self.settings.compute_dtype),
            "device_map": device_map(self.device, offload=self.options.fp32_cpu_offload),
            "trust_remote_code": self.options.trust_remote_code,
        }

    def load(self, mode: Mode | None, skip: list[str]) -> Any:
        from transformers import AutoModelForCausalLM

        kwargs = self.load_kwargs()
        if mode is not None:
            kwargs["quantization_config"] = quantization_config(mode, self.settings, skip)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)
        model.eval()
        return model

    def prepare_corpus(self, corpus: Path, n_ctx_train: int | None) -> dict[str, Any]:
        from ggufkit.evaluate.ppl import plan

        text = corpus.read_text(encoding="utf-8", errors="replace")
        ids, add_bos = tokenize_corpus(self.tokenizer, text)
        chosen = plan(
            len(ids),
            ctx=self.options.ctx,
            chunks=self.options.chunks,
            n_ctx_train=n_ctx_train,
            kld=True,
            corpus=corpus,
        )
        bos = self.tokenizer.bos_token_id if add_bos else None
        self.windows = make_windows(ids, ctx=chosen.ctx, chunks=chosen.chunks, bos=bos)
        return {
            "corpus": str(corpus),
            "corpus_sha256": sha256_file(corpus),
            "corpus_tokens": len(ids),
            "ctx": chosen.ctx,
            "chunks": chosen.chunks,
        }

    def measure(self, name: str, mode: Mode | None, plan: guards.ModulePlan | None) -> ModeResult:
        """Load, (save), score and time one model; it is freed before returning."""
        options = self.options
        result = ModeResult(
            name=name,
            description=mode.description
            if mode
            else f"unquantized ({self.settings.compute_dtype})",
            bits=mode.bits if mode else torch_dtype(self.settings.compute_dtype).itemsize * 8,
        )
        if plan is not None:
            result.notes += plan.notes
            result.quantized_layers = plan.quantized
            result.kept_layers = [
                layer.name for layer in self.layers if guards.is_skipped(layer.name, plan.skip)
            ]
        probe = MemoryProbe(self.device)
        probe.reset()
        start = time.perf_counter()
        model = self.load(mode, plan.skip if plan else [])
        result.load_s = time.perf_counter() - start
        try:
            if mode is not None and self.device == "cpu":
                result.notes += guards.guard_fast_path(model, name)
            memory = [probe.read(model)]
            if mode is not None:
                # Before any forward: on AVX512-BF16 CPUs the first one repacks 4-bit weights
                # into a layout the reference dequantization cannot read.
                result.weight_rel_error, covered = weight_error(model, self.model_dir)
                if covered < (plan.quantized if plan else 0):
                    result.notes.append(
                        f"weight error covers {covered} of {plan.quantized if plan else 0} "
                        "quantized layers (the others have no same-named tensor in the checkpoint)"
                    )
            if mode is not None and options.save is not None:
                note = self._save(model, options.save / mode.name)
                result.saved_to = str(options.save / mode.name)
                result.notes.append(note)
                log.info("%s: %s", name, note)
                probe.reset()  # the reload for verification is not this model's memory
            if mode is None:
                self.n_params = sum(p.numel() for p in model.parameters())
            self._score(model, result, record=mode is None)
            gen = time_generation(
                model,
                self.tokenizer,
                options.prompts,
                runs=options.runs,
                max_new_tokens=options.max_new_tokens,
                seed=options.seed,
                device=self.device,
            )
            result.gen_s, result.runs, result.tokens = gen.seconds, gen.runs, gen.tokens
            result.tokens_per_s, result.ms_per_token = gen.tokens_per_s, gen.ms_per_token
            result.outputs = gen.outputs
            if mode is None:
                self.baseline_outputs = gen.outputs
            elif self.baseline_outputs:
                same = sum(a == b for a, b in zip(gen.outputs, self.baseline_outputs, strict=False))
                result.same_output = same / len(self.baseline_outputs)
            memory.append(probe.read(model))
            if mode is not None:
                result.notes += footprint_change(mode, memory[0], memory[-1], self.device)
            self._memory(result, memory)
        finally:
            del model
            gc.collect()
        return result

    def _save(self, model: Any, out_dir: Path) -> str:
        from ggufkit.bnb.save import save_quantized

        ids = self.tokenizer(self.options.prompts[0], return_tensors="pt")["input_ids"]
        return save_quantized(
            model,
            self.tokenizer,
            out_dir,
            source_dir=self.model_dir,
            load_kwargs=self.load_kwargs(),
            probe={"input_ids": ids},
        )

    def _score(self, model: Any, result: ModeResult, *, record: bool) -> None:
        if self.windows is None:
            return
        if record:
            vocab = int(model.get_output_embeddings().weight.shape[0])
            self.baseline = BaselineLogits(self.windows, vocab, self.options.tmp_dir)
        if self.baseline is None:
            return
        quality = score(
            model, self.windows, device=self.device, baseline=self.baseline, record=record
        )
        for item in fields(Quality):
            setattr(result, item.name, getattr(quality, item.name))

    def _memory(self, result: ModeResult, stats: list[MemoryStats]) -> None:
        def peak(values: list[int | None]) -> int | None:
            known = [v for v in values if v is not None]
            return max(known) if known else None

        result.loaded_footprint_bytes = stats[0].footprint_bytes
        result.footprint_bytes = stats[-1].footprint_bytes
        result.peak_allocated_bytes = peak([s.peak_allocated_bytes for s in stats])
        result.peak_reserved_bytes = peak([s.peak_reserved_bytes for s in stats])
        result.peak_rss_bytes = peak([s.peak_rss_bytes for s in stats])
        if self.n_params and result.footprint_bytes:
            result.bpw = 8 * result.footprint_bytes / self.n_params

    def close(self) -> None:
        if self.baseline is not None:
            self.baseline.close()


def run_bnb(model: str | Path | ResolvedModel, options: BnbOptions | None = None) -> BnbReport:
    """Measure the unquantized model and each bitsandbytes mode on the same prompts and corpus.

    ``model``: a checkpoint directory, a Hub id, or an already resolved model. Sets torch's
    thread count when ``options.threads`` is given.
    """
    options = options or BnbOptions()
    if options.runs < 1 or options.max_new_tokens < 1 or not options.prompts:
        raise UsageError("need at least one prompt, one run and one new token")
    resolved, notes, device = start(
        model,
        trust_remote_code=options.trust_remote_code,
        threads=options.threads,
        device=options.device,
        notes=options.extra_notes,
    )
    model_dir = resolved.path
    config = load_config(model_dir)
    compute = options.compute_dtype or default_compute_dtype(device)
    if options.fp32_cpu_offload and device == "cpu":
        notes.append("--fp32-cpu-offload has no effect on CPU: the whole model is on CPU")
    session = _Session(model_dir, options, device, compute)
    corpus_info: dict[str, Any] = {}
    if options.quality:
        from ggufkit.evaluate import default_corpus

        corpus = options.corpus if options.corpus is not None else default_corpus()
        if not corpus.is_file():
            raise InputError(f"the corpus {corpus} does not exist", hint="check --corpus")
        corpus_info = session.prepare_corpus(corpus, config.get("max_position_embeddings"))
    report = BnbReport(
        model=resolved.describe(),
        device=device,
        device_name=device_name(device),
        compute_dtype=compute,
        corpus=corpus_info.get("corpus"),
        corpus_sha256=corpus_info.get("corpus_sha256"),
        corpus_tokens=corpus_info.get("corpus_tokens"),
        ctx=corpus_info.get("ctx"),
        chunks=corpus_info.get("chunks"),
        prompts=list(options.prompts),
        runs=options.runs,
        max_new_tokens=options.max_new_tokens,
        seed=options.seed,
        versions=versions(),
        notes=notes,
    )
    for note in notes:
        log.info("%s", note)
    try:
        with guards.quiet_bitsandbytes() as dropped:
            log.info("%s: loading in %s on %s", BASELINE, compute, device)
            report.results.append(session.measure(BASELINE, None, None))
            report.n_params = session.n_params
            for mode in options.modes:
                report.results.append(run_mode(session, mode))
        if dropped:
            report.notes.append(
                f"dropped {sum(dropped.values())} repeated bitsandbytes warning(s): "
                + "; ".join(f"'{prefix} …' ×{n}" for prefix, n in dropped.items())
            )
    finally:
        session.close()
    return report


def run_mode(session: Any, mode: Mode, row: Callable[..., Any] = ModeResult) -> Any:
    """``session.measure`` one mode after ``session.plan(mode)``; a row of type ``row`` that says
    skipped or failed when it could not run (the other modes still do)."""
    plan = session.plan(mode)
    for note in plan.notes:
        log.warning("%s: %s", mode.name, note)
    if plan.quantized == 0:
        reason = "no layer left to quantize" + (f" ({plan.notes[0]})" if plan.notes else "")
        log.warning("%s: skipped: %s", mode.name, reason)
        return row(name=mode.name, status="skipped", reason=reason, notes=plan.notes)
    log.info("%s: loading (%s)", mode.name, mode.description)
    try:
        return session.measure(mode.name, mode, plan)
    except EvaluationError as exc:
        log.error("%s: failed: %s", mode.name, exc)
        return row(name=mode.name, status="failed", reason=str(exc), notes=plan.notes)
    except Exception as exc:  # an unknown bitsandbytes defect must not hide the other modes
        log.debug("%s failed", mode.name, exc_info=True)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("%s: failed: %s", mode.name, reason)
        return row(name=mode.name, status="failed", reason=reason, notes=plan.notes)


def footprint_change(
    mode: Mode, loaded: MemoryStats, running: MemoryStats, device: str
) -> list[str]:
    """A note when a model's footprint changed once it ran (the reported one is the latter)."""
    before, after = loaded.footprint_bytes, running.footprint_bytes
    if before is None or after is None or before == after:
        return []
    note = f"footprint {human_bytes(before)} as loaded, {human_bytes(after)} once run"
    if device == "cpu" and mode.bits == 4:
        note += (
            ": bitsandbytes' AVX512-BF16 fast path repacked the 4-bit weights with bf16 block "
            "scales on the first forward"
        )
        if mode.double_quant:
            note += ", undoing the double quantization"
    return [note]
