"""The typed results of ``ggufkit eval`` and ``ggufkit bench``, and their JSON form.

The JSON shape is documented in :mod:`ggufkit.evaluate`; :meth:`EvalReport.from_json` reads it back
(``ggufkit compare`` consumes it), so every field added here must stay optional on reading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = "ggufkit.eval/1"
Z95 = 1.959963984540054  # the standard normal's 0.975 quantile: a 95 % two-sided interval


def normal_half(std_error: float | None) -> float | None:
    """The half-width of a 95 % normal interval from a standard error."""
    return None if std_error is None else Z95 * std_error


@dataclass
class SpeedResult:
    """One llama-bench test: prompt processing (``pp``) or generation (``tg``) at a thread count."""

    model: str  # path as given
    test: str  # "pp512", "tg128"
    n_prompt: int
    n_gen: int
    threads: int
    tps: float  # tokens per second, mean over repetitions
    tps_std: float
    repetitions: int
    backend: str = "CPU"
    model_type: str = ""  # llama.cpp's description, e.g. "llama 7B Q4_0"
    flash_attn: str | None = None  # "on"/"off": what the test ran with (auto resolved)

    @property
    def kind(self) -> str:
        return "pp" if self.n_gen == 0 else "tg"

    @property
    def ms_per_token(self) -> float:
        return 1000.0 / self.tps if self.tps > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ms_per_token"] = self.ms_per_token
        return data


@dataclass
class ModelResult:
    """Everything measured for one GGUF file. ``None`` means "not measured"."""

    name: str  # the column label: the file type (F16, Q4_0), or the file stem when types repeat
    path: str
    type: str  # general.file_type as llama.cpp names it ("Q4_0"), or the dominant tensor type
    model: str  # what the guide's "Model" column shows: size label or general.name
    size_bytes: int
    n_params: int
    bpw: float | None  # bits per weight over all tensors
    is_baseline: bool = False
    ppl: float | None = None
    ppl_err: float | None = None
    kld_mean: float | None = None  # mean KL-divergence from the baseline, nats per token
    kld_err: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None  # fraction of tokens whose top token equals the baseline's
    top1_err: float | None = None
    threads: int | None = None
    pp_tps: float | None = None  # prompt processing, tokens per second
    pp_tps_std: float | None = None
    tg_tps: float | None = None  # generation, tokens per second
    tg_tps_std: float | None = None
    # --target-error only: 95 % half-widths, chunks used, seconds spent and saved on scoring
    ppl_ci: float | None = None
    delta_ppl: float | None = None  # PPL(type) - PPL(baseline) on the same chunks
    delta_ppl_ci: float | None = None
    kld_ci: float | None = None
    top1_ci: float | None = None
    chunks: int | None = None
    eval_seconds: float | None = None
    eval_seconds_saved: float | None = None

    @property
    def ms_per_token(self) -> float | None:
        """Generation time per token (the guide's "ms/tok")."""
        return 1000.0 / self.tg_tps if self.tg_tps else None

    @property
    def pp_ms_per_token(self) -> float | None:
        return 1000.0 / self.pp_tps if self.pp_tps else None

    # 95 % half-widths in either mode (reports written before the whole-corpus mode filled the
    # *_ci fields have only llama-perplexity's standard errors: those are scaled)
    @property
    def ppl_half(self) -> float | None:
        return self.ppl_ci if self.ppl_ci is not None else normal_half(self.ppl_err)

    @property
    def kld_half(self) -> float | None:
        return self.kld_ci if self.kld_ci is not None else normal_half(self.kld_err)

    @property
    def top1_half(self) -> float | None:
        return self.top1_ci if self.top1_ci is not None else normal_half(self.top1_err)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ms_per_token"] = self.ms_per_token
        data["pp_ms_per_token"] = self.pp_ms_per_token
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def fill_whole_corpus_intervals(
    result: ModelResult, delta_ppl: float | None = None, delta_ppl_err: float | None = None
) -> None:
    """Whole-corpus mode: llama-perplexity's standard errors as 95 % half-widths, so that "±"
    means the same in both modes; ΔPPL is llama-perplexity's paired ``PPL(Q)-PPL(base)``."""
    if delta_ppl is not None:
        result.delta_ppl, result.delta_ppl_ci = delta_ppl, normal_half(delta_ppl_err)
    result.ppl_ci = result.ppl_half
    result.kld_ci = result.kld_half
    result.top1_ci = result.top1_half


@dataclass
class EvalReport:
    corpus: str
    corpus_sha256: str
    corpus_tokens: int | None
    ctx: int
    chunks: int
    baseline: str | None
    llama_cpp_commit: str
    models: list[ModelResult] = field(default_factory=list)
    bench: dict[str, int] = field(default_factory=dict)  # n_prompt, n_gen, repetitions
    schema: str = SCHEMA
    # --target-error only: the sequential run (target, seed, corpus_chunks, tokens_scored,
    # tokens_full, seconds, seconds_saved, cache_hits)
    sequential: dict[str, Any] | None = None
    # the -fa setting every measurement ran with, and what llama.cpp resolved it to
    flash_attn: str = "auto"
    flash_attn_resolved: str | None = None
    lora: str | None = None  # a LoRA GGUF applied to every model at run time

    @property
    def baseline_result(self) -> ModelResult | None:
        return next((m for m in self.models if m.is_baseline), None)

    @property
    def interval_method(self) -> str:
        """How the 95 % intervals were computed: the words a table or a plot's caption uses."""
        if self.sequential is not None:
            return "Student t over the chunks each type scored"
        return "normal approximation from llama-perplexity's per-token standard errors"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"] = [m.to_json() for m in self.models]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known and key != "models"}
        return cls(**values, models=[ModelResult.from_json(m) for m in data.get("models", [])])
