"""The build's self-test: the embedded tiny-llama through every llama.cpp code path ggufkit uses.

A build that compiles is not a build that runs: at the pinned commit, ggml-cpu's AMX kernels
compile on an AMX CPU and then crash on every q8_0 and q4_0 model. So after each build (and on
``ggufkit doctor``) the embedded tiny-llama is converted, quantized to q8_0, q4_0 and q4_k_m with
the built ``llama-quantize``, scored with the built ``llama-perplexity`` on a few chunks, and one
file is loaded and run through ``llama-cpp-python`` in a child process, all with at least two
threads (the AMX fault is per thread). The result is stored in the build stamp, so a cached build
costs nothing; a build that failed it is refused by ``current_build()``.

It uses the converter, the quantizer, ``evaluate``'s perplexity and ``inference``'s model loader,
so it sits above them (``llamacpp/`` must not import the pipeline); ``build``, ``doctor`` and the
batch nodes call it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import BuildError, GGUFKitError, ToolCrashedError
from ggufkit.core.log import get_logger
from ggufkit.llamacpp import build as llama_build
from ggufkit.llamacpp.build import BuildInfo
from ggufkit.llamacpp.layout import BuildOptions

log = get_logger("selftest")

MODEL = "tiny-llama"
TYPES = ("q8_0", "q4_0", "q4_k_m")
CTX = 128
CHUNKS = 2
PROBE_TOKENS = 32
# A working kernel scores the trained tiny-llama near 64 (README); a random model near the
# vocabulary size (2048). Far above this bound, the kernel computes nonsense without crashing.
MAX_SANE_PPL = 500.0


@dataclass
class SelfTestResult:
    ok: bool
    threads: int
    seconds: float = 0.0
    perplexity: dict[str, float] = field(default_factory=dict)  # type -> PPL
    bindings: str = "not run"  # "ok", "skipped (…)" or the failure
    step: str | None = None  # what failed
    signal: str | None = None
    error: str | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED at {self.step}: {self.error}"
        scores = ", ".join(f"{name} {value:.1f}" for name, value in self.perplexity.items())
        return (
            f"passed in {self.seconds:.1f} s with {self.threads} threads "
            f"(perplexity {scores}; bindings {self.bindings})"
        )


def _probe_bindings(model: str, threads: int, n_tokens: int) -> list[int]:
    """In the child: load ``model`` with llama-cpp-python and evaluate a few tokens."""
    from ggufkit.inference.parity import open_gguf

    with open_gguf(model, n_ctx=64, n_threads=threads) as llm:
        ids = llm.tokenize(b"Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace")
        ids = (ids * n_tokens)[:n_tokens]
        llm.eval(ids)
        scores = llm.scores[: len(ids)]
        if not all(math.isfinite(float(v)) for row in scores for v in row[:8]):
            raise BuildError(f"llama-cpp-python computed non-finite logits on {model}")
        return [int(row.argmax()) for row in scores]


def _remedy(options: dict[str, object] | None) -> str:
    if options and options.get("amx"):
        return "rebuild without --amx: `ggufkit build --force` (the AMX kernels crash at this pin)"
    return "rebuild with `ggufkit build --portable`, or report the log"


def run_selftest(
    info: BuildInfo, *, threads: int | None = None, bindings: bool = True
) -> SelfTestResult:
    """Test ``info`` (the current build) end to end; never raises for a failing build."""
    from ggufkit.convert import convert
    from ggufkit.data import default_corpus, embedded_model
    from ggufkit.evaluate.ppl import perplexity
    from ggufkit.llamacpp.isolate import run_isolated
    from ggufkit.quantize import quantize

    threads = max(2, threads or os.cpu_count() or 2)
    result = SelfTestResult(ok=False, threads=threads)
    started = time.perf_counter()
    step = f"converting the embedded {MODEL}"
    try:
        with tempfile.TemporaryDirectory(prefix="ggufkit-selftest-") as tmp:
            f16 = Path(tmp) / f"{MODEL}-F16.gguf"
            convert(embedded_model(MODEL), f16, outtype="f16", engine="native")
            step = "llama-quantize " + ", ".join(TYPES)
            quantized = quantize(f16, list(TYPES), outdir=tmp)
            for item in quantized:
                step = f"llama-perplexity on {item.type}"
                score = perplexity(
                    item.output, default_corpus(), ctx=CTX, chunks=CHUNKS, threads=threads
                )
                if not score.ppl < MAX_SANE_PPL:
                    raise BuildError(
                        f"{item.type} scores perplexity {score.ppl:.1f} (a working build: under "
                        f"{MAX_SANE_PPL:.0f}); the CPU kernels compute wrong results"
                    )
                result.perplexity[item.type] = round(score.ppl, 3)
            if bindings:
                probe = next(item for item in quantized if item.type.lower() == "q4_0")
                step = f"llama-cpp-python running {probe.type}"
                run_isolated(
                    _probe_bindings,
                    str(probe.output),
                    threads,
                    PROBE_TOKENS,
                    what=f"llama-cpp-python on {probe.type}",
                )
                result.bindings = "ok"
            else:
                result.bindings = "skipped (--no-bindings)"
    except ToolCrashedError as exc:
        result.signal, result.error = exc.signal_name, exc.message
        result.hint = _remedy(info.options)
    except GGUFKitError as exc:
        result.error, result.hint = exc.message, exc.hint or _remedy(info.options)
    else:
        result.ok = True
    result.step = None if result.ok else step
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def ensure_selftest(
    info: BuildInfo, *, threads: int | None = None, bindings: bool = True, force: bool = False
) -> SelfTestResult:
    """The stored self-test of ``info``, or run it now and store it; raises when it fails."""
    if info.selftest is not None and not force:
        stored = SelfTestResult(**info.selftest)  # type: ignore[arg-type]
    else:
        log.info("self-testing the llama.cpp build %s (the embedded %s)", info.key, MODEL)
        stored = run_selftest(info, threads=threads, bindings=bindings)
        llama_build.record_selftest(info, stored.to_json())
        log.info("self-test %s", stored.summary())
    if not stored.ok:
        raise BuildError(
            f"the llama.cpp build {info.key} failed its self-test: {stored.step}: {stored.error}",
            hint=stored.hint,
        )
    return stored


def build_and_test(
    options: BuildOptions | None = None,
    *,
    jobs: int | None = None,
    force: bool = False,
    bindings: bool = True,
    selftest: bool = True,
) -> tuple[BuildInfo, SelfTestResult | None]:
    """``ggufkit build``: build (or reuse) the pinned llama.cpp, then make sure it runs here."""
    info = llama_build.build(options, jobs=jobs, force=force, bindings=bindings)
    if not selftest:
        return info, None
    return info, ensure_selftest(info, bindings=bindings, force=force)
