"""``run_image_bnb``: the seed's script as a library call — a question about a picture, answered by
a vision-language checkpoint unquantized and in each bitsandbytes mode.

For each row: the greedy answer, the time and the tokens generated over ``runs`` repeated runs,
peak memory as ``ggufkit bnb`` measures it (CUDA max allocated where CUDA exists, peak RSS on CPU)
and, with ``save``, the quantized model written with its processor and reloaded as a check.
The 4-bit defaults are the seed's ``BitsAndBytesConfig``: nf4 with double quantization, compute in
float16, uint8 storage, ``out_proj``, ``kv_proj`` and ``lm_head`` kept unquantized, LLM.int8()
threshold 6.0; each is an option.

bitsandbytes 0.50 on CPU needs a 4-bit layer's input to be at least one block (64) wide and its
output a multiple of 32 for the fast path: narrower layers are kept unquantized (with a note),
the fast path is turned off where the output does not fit (:mod:`ggufkit.bnb.guards`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.bnb import guards
from ggufkit.bnb.image_results import BASELINE, ImageReport, ImageRow
from ggufkit.bnb.loading import device_map, device_name, skeleton, start, versions
from ggufkit.bnb.measure import MemoryProbe, MemoryStats, time_generation
from ggufkit.bnb.modes import (
    MODES,
    Mode,
    QuantSettings,
    quantization_config,
    quantization_kwargs,
    torch_dtype,
)
from ggufkit.bnb.runner import run_mode
from ggufkit.bnb.vision import Processor, image_inputs, load_processor
from ggufkit.core.errors import UsageError
from ggufkit.core.log import get_logger
from ggufkit.hub import ResolvedModel

log = get_logger("bnb.image")

SEED_SKIP_MODULES = ("out_proj", "kv_proj", "lm_head")
SEED_MODES = ("nf4-dq",)  # the seed's nf4 with double quantization
SEED_RUNS = 10
DEFAULT_QUESTION = "What is in the picture?"
MIN_4BIT_INPUT = 64  # bitsandbytes' 4-bit block: narrower rows fail on CPU


@dataclass
class ImageBnbOptions:
    image: Path
    question: str = DEFAULT_QUESTION
    modes: Sequence[Mode] = tuple(MODES[name] for name in SEED_MODES)
    compute_dtype: str = "f16"
    quant_storage: str = "uint8"
    skip_modules: Sequence[str] = SEED_SKIP_MODULES  # besides tied weights
    int8_threshold: float = 6.0
    runs: int = SEED_RUNS
    max_new_tokens: int = 32
    save: Path | None = None  # each mode goes to save/<mode>
    trust_remote_code: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    seed: int = 0
    threads: int | None = None
    extra_notes: list[str] = field(default_factory=list)


class _ImageSession:
    """What the rows share: the processor, the inputs, the module plan's skeleton."""

    def __init__(self, model_dir: Path, options: ImageBnbOptions, device: str) -> None:
        self.model_dir, self.options, self.device = model_dir, options, device
        self.settings = QuantSettings(
            compute_dtype=options.compute_dtype,
            quant_storage=options.quant_storage,
            int8_threshold=options.int8_threshold,
        )
        self.processor: Processor = load_processor(
            model_dir, trust_remote_code=options.trust_remote_code
        )
        self.inputs = image_inputs(self.processor, options.question, options.image, device)
        from transformers import AutoModelForImageTextToText

        # Linear layers and default skips, from the model built on the meta device
        self.layers, self.base_skip = skeleton(
            model_dir,
            AutoModelForImageTextToText,
            trust_remote_code=options.trust_remote_code,
            skip_modules=options.skip_modules,
        )

    def load_kwargs(self) -> dict[str, Any]:
        return {
            "dtype": torch_dtype(self.settings.compute_dtype),
            "device_map": device_map(self.device, offload=False),
            "trust_remote_code": self.options.trust_remote_code,
        }

    def plan(self, mode: Mode) -> guards.ModulePlan:
        """The text path's plan, and on CPU the 4-bit layers narrower than a block kept too."""
        base = list(self.base_skip)
        notes = []
        if mode.bits == 4 and self.device == "cpu":
            narrow = [
                layer.name
                for layer in self.layers
                if layer.in_features < MIN_4BIT_INPUT and not guards.is_skipped(layer.name, base)
            ]
            if narrow:
                base += narrow
                notes.append(
                    f"kept {len(narrow)} layer(s) unquantized ({guards.shorten(narrow)}): their "
                    f"input is narrower than {MIN_4BIT_INPUT}, which bitsandbytes' CPU 4-bit "
                    "kernels cannot read"
                )
        plan = guards.plan_modules(
            self.layers,
            mode,
            base_skip=base,
            device=self.device,
            quant_storage=self.settings.quant_storage,
        )
        plan.notes[:0] = notes
        return plan

    def measure(self, name: str, mode: Mode | None, plan: guards.ModulePlan | None) -> ImageRow:
        from transformers import AutoModelForImageTextToText

        options = self.options
        row = ImageRow(
            name=name,
            kind="bitsandbytes" if mode else "transformers",
            description=mode.description if mode else f"unquantized ({options.compute_dtype})",
        )
        kwargs = self.load_kwargs()
        if mode is not None and plan is not None:
            row.notes += plan.notes
            row.quantized_layers = plan.quantized
            row.kept_layers = sum(guards.is_skipped(x.name, plan.skip) for x in self.layers)
            kwargs["quantization_config"] = quantization_config(mode, self.settings, plan.skip)
        probe = MemoryProbe(self.device)
        probe.reset()
        start = time.perf_counter()
        model = AutoModelForImageTextToText.from_pretrained(self.model_dir, **kwargs)
        model.eval()
        row.load_s = time.perf_counter() - start
        try:
            if mode is not None and self.device == "cpu":
                row.notes += guards.guard_fast_path(model, name)
            memory = [probe.read(model)]
            if mode is not None and options.save is not None:
                self._save(model, options.save / mode.name, row)
                probe.reset()  # the reload for verification is not this model's memory
            gen = time_generation(
                model,
                self.processor.tokenizer,
                [],
                encoded=[self.inputs],
                runs=options.runs,
                max_new_tokens=options.max_new_tokens,
                seed=options.seed,
                device=self.device,
            )
            row.gen_s, row.runs, row.tokens = gen.seconds, gen.runs, gen.tokens
            row.tokens_per_s = gen.tokens_per_s
            row.answer = gen.outputs[0]
            memory.append(probe.read(model))
            _memory(row, memory)
        finally:
            del model
            gc.collect()
        return row

    def _save(self, model: Any, out_dir: Path, row: ImageRow) -> None:
        from transformers import AutoModelForImageTextToText

        from ggufkit.bnb.save import save_quantized

        note = save_quantized(
            model,
            self.processor,
            out_dir,
            source_dir=self.model_dir,
            load_kwargs=self.load_kwargs(),
            probe=dict(self.inputs),
            auto_class=AutoModelForImageTextToText,
        )
        row.saved_to = str(out_dir)
        row.size_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
        row.notes.append(note.replace(str(out_dir), "<save>/" + out_dir.name))
        log.info("%s: %s", row.name, note)


def _memory(row: ImageRow, stats: list[MemoryStats]) -> None:
    def peak(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    row.footprint_bytes = stats[-1].footprint_bytes
    row.peak_allocated_bytes = peak([s.peak_allocated_bytes for s in stats])
    row.peak_rss_bytes = peak([s.peak_rss_bytes for s in stats])


def configs(options: ImageBnbOptions, skip: Sequence[str]) -> dict[str, Any]:
    """Each mode's ``BitsAndBytesConfig`` fields as the report shows them (before CPU guards)."""
    settings = QuantSettings(options.compute_dtype, options.quant_storage, options.int8_threshold)
    shown = {}
    for mode in options.modes:
        kwargs = quantization_kwargs(mode, settings, list(skip))
        kwargs.pop("llm_int8_enable_fp32_cpu_offload", None)
        kwargs.setdefault("llm_int8_threshold", float(options.int8_threshold))
        shown[mode.name] = kwargs
    return shown


def run_image_bnb(model: str | Path | ResolvedModel, options: ImageBnbOptions) -> ImageReport:
    """Ask ``options.question`` about ``options.image`` unquantized and in each mode."""
    if options.runs < 1 or options.max_new_tokens < 1 or not options.question.strip():
        raise UsageError("need a question, at least one run and one new token")
    resolved, notes, device = start(
        model,
        trust_remote_code=options.trust_remote_code,
        threads=options.threads,
        device=options.device,
        notes=options.extra_notes,
    )
    session = _ImageSession(resolved.path, options, device)
    report = ImageReport(
        model=resolved.describe(),
        image=str(options.image),
        question=options.question,
        device=device,
        device_name=device_name(device),
        compute_dtype=options.compute_dtype,
        runs=options.runs,
        max_new_tokens=options.max_new_tokens,
        seed=options.seed,
        quantization=configs(options, session.base_skip),
        versions=versions(),
        notes=notes,
    )
    if not session.processor.whole:
        report.notes.append(
            "the processor was built from its image processor and tokenizer (its video part "
            "needs torchvision)"
        )
    with guards.quiet_bitsandbytes():
        log.info("%s: loading in %s on %s", BASELINE, options.compute_dtype, device)
        report.add(session.measure(BASELINE, None, None))
        for mode in options.modes:
            report.add(run_mode(session, mode, ImageRow))
    return report
