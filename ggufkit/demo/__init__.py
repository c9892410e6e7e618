"""``ggufkit demo``: the whole pipeline, offline, on the tiny models shipped inside ggufkit.

Convert tiny-llama, tiny-llama-milton (its delta merged on the fly) and tiny-bloom to f16, quantize
each to q8_0, q4_0 and q4_k_m, evaluate every file on held-out text, put bitsandbytes beside GGUF
on tiny-llama, and generate a few lines from each q4_0 file; run the embedded LoRA adapter as an
adapter GGUF, merged and in PEFT (:mod:`ggufkit.demo.lora`). Everything lands in one directory
with a provenance ``manifest.json``; each step runs through the workspace step runner, so a step
whose inputs (by sha256) and options are unchanged is skipped on the next run.

- :mod:`ggufkit.demo.pipeline`: :func:`run_demo`, the steps;
- :mod:`ggufkit.demo.lora`, :mod:`ggufkit.demo.lora_run`: the LoRA section and its steps;
- :mod:`ggufkit.demo.results`: the models and settings, :class:`DemoResult`, its JSON
  (``results.json``) and text (``results.md``, and what ``ggufkit demo`` prints).
"""

from ggufkit.demo.pipeline import run_demo
from ggufkit.demo.results import (
    DEFAULT_OUTDIR,
    MODELS,
    SCHEMA,
    TYPES,
    DemoModel,
    DemoResult,
    DemoSettings,
    ModelRun,
    Sample,
    markdown,
    where,
)

__all__ = [
    "DEFAULT_OUTDIR",
    "MODELS",
    "SCHEMA",
    "TYPES",
    "DemoModel",
    "DemoResult",
    "DemoSettings",
    "ModelRun",
    "Sample",
    "markdown",
    "run_demo",
    "where",
]
