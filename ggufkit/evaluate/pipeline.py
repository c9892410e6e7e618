"""``evaluate()``: size, bits per weight, perplexity, KL-divergence and speed for a set of GGUFs."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError
from ggufkit.core.fsutil import check_free_disk, sha256_file
from ggufkit.core.log import get_logger, progress
from ggufkit.core.partials import owned_temp_dir
from ggufkit.evaluate import ppl as ppl_mod
from ggufkit.evaluate.lora import check_eval_lora
from ggufkit.evaluate.results import EvalReport, ModelResult, fill_whole_corpus_intervals
from ggufkit.evaluate.sequential import (
    SequentialRun,
    fill_results,
    run_sequential,
    sequential_summary,
)
from ggufkit.evaluate.sequential.batchscore import default_threads
from ggufkit.evaluate.sequential.intervals import DEFAULT_MIN_CHUNKS
from ggufkit.evaluate.speed import DEFAULT_GEN, DEFAULT_PROMPT, benchmark
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.formats.ggufinfo import ArraySummary, GGUFInfo
from ggufkit.llamacpp.attention import current_flash_attn, resolved_flash_attn
from ggufkit.llamacpp.build import current_build

log = get_logger("evaluate")

DEFAULT_BENCH_REPETITIONS = 3


def default_corpus() -> Path:
    """The corpus shipped with ggufkit (``ggufkit.data.default_corpus``), if this install has one."""
    try:
        data: Any = importlib.import_module("ggufkit.data")
    except ImportError:
        data = None
    finder = getattr(data, "default_corpus", None)
    if finder is None:
        raise UsageError(
            "no evaluation corpus given", hint="pass --corpus FILE (plain text, a few hundred KB)"
        )
    return Path(finder())


def type_label(info: GGUFInfo) -> str:
    """``Q4_0``, ``F16``...: the file type, else the most common type of the 2-D tensors."""
    if info.file_type_name:
        return info.file_type_name
    matrices = Counter(t.type_name for t in info.tensors if len(t.shape) >= 2)
    return (matrices or info.tensor_types).most_common(1)[0][0] if info.tensors else "?"


def model_label(info: GGUFInfo) -> str:
    """The guide's "Model" column: the model's name, else its ``7B``-style size label (every
    converted file has one now, so the name comes first), else the file's stem."""
    for key in ("general.name", "general.size_label", "general.basename"):
        value = info.metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return info.path.stem


def n_vocab(info: GGUFInfo) -> int | None:
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list | ArraySummary) else None


def n_ctx_train(info: GGUFInfo) -> int | None:
    value = info.metadata.get(f"{info.architecture}.context_length")
    return value if isinstance(value, int) and value > 0 else None


def _new_result(info: GGUFInfo, *, is_baseline: bool) -> ModelResult:
    return ModelResult(
        name=type_label(info),
        path=str(info.path),
        type=type_label(info),
        model=model_label(info),
        size_bytes=info.file_size,
        n_params=info.parameter_count,
        bpw=info.bits_per_weight,
        is_baseline=is_baseline,
    )


def _unique_names(results: list[ModelResult]) -> None:
    counts = Counter(r.name for r in results)
    for result in results:
        if counts[result.name] > 1:
            result.name = Path(result.path).stem


def _order(models: Sequence[Path], baseline: Path | None) -> list[Path]:
    """Distinct paths, the baseline first (added when it was not among the models)."""
    seen: dict[Path, Path] = {}
    for path in [*([baseline] if baseline else []), *models]:
        seen.setdefault(path.resolve(), path)
    return list(seen.values())


def evaluate(
    models: Sequence[str | Path],
    *,
    baseline: str | Path | None = None,
    corpus: str | Path | None = None,
    ctx: int | None = None,
    chunks: int | None = None,
    threads: int | None = None,
    speed: bool = True,
    n_prompt: int = DEFAULT_PROMPT,
    n_gen: int = DEFAULT_GEN,
    repetitions: int = DEFAULT_BENCH_REPETITIONS,
    tmp_dir: str | Path | None = None,
    target_error: float | None = None,
    min_chunks: int = DEFAULT_MIN_CHUNKS,
    seed: int = 0,
    lora: str | Path | None = None,
) -> EvalReport:
    """Measure each model: file size, bits per weight, perplexity on ``corpus``, speed, and, when
    there is a baseline, KL-divergence and top-token agreement against it.

    Without ``baseline`` the first unquantized model (F16/BF16/F32) serves as one; with none,
    KL-divergence is skipped. ``ctx`` defaults to 512 (or the model's training context), lowered
    to fit a short corpus. The KL-divergence base file lives in a temporary directory under
    ``tmp_dir`` and is deleted afterwards.

    With ``target_error`` (a fraction: 0.01 for 1 %), the types are scored in-process against
    the baseline, chunk by chunk in a random order (``seed``), each until its paired 95 %
    intervals are within the target (:mod:`ggufkit.evaluate.sequential`).

    Both paths run with the same flash-attention setting (``GGUFKIT_FLASH_ATTN``, ``--flash-attn``)
    and, when ``threads`` is None, the same thread count (llama.cpp's default, made explicit).

    ``lora``: a LoRA GGUF applied to every model at run time (checked against each first);
    llama-bench cannot apply one, so speed is not measured then.
    """
    if not models and baseline is None:
        raise UsageError("no models to evaluate", hint="give one or more .gguf files")
    corpus_path = Path(corpus) if corpus is not None else default_corpus()
    if not corpus_path.is_file():
        raise InputError(f"the corpus {corpus_path} does not exist", hint="check --corpus")
    chosen = _choose(models, baseline)
    lora_path, speed = check_eval_lora(lora, chosen.paths, target_error, speed)
    if target_error is not None and threads is None:
        threads = default_threads()  # the scorer's count is llama-perplexity's
    n_tokens = ppl_mod.count_tokens(chosen.reference.path, corpus_path)
    plan = ppl_mod.plan(
        n_tokens,
        ctx=ctx,
        chunks=chunks,
        n_ctx_train=n_ctx_train(chosen.reference),
        kld=chosen.kld,
        corpus=corpus_path,
    )
    log.info(
        "evaluating %d model(s) on %s: %s tokens, context %d, %s chunks",
        len(chosen.paths),
        corpus_path.name,
        n_tokens if n_tokens is not None else "?",
        plan.ctx,
        plan.chunks or "all",
    )
    results = chosen.new_results()
    bench = _Bench(n_prompt, n_gen, repetitions, threads) if speed else None
    sequential = None
    if target_error is None:
        used_chunks = _score_whole(
            chosen, results, corpus_path, plan, threads, tmp_dir, bench, lora_path
        )
    else:
        run = _score_sequential(
            chosen, results, corpus_path, plan.ctx, target_error, min_chunks, seed, chunks, threads
        )
        used_chunks = run.base_chunks
        sequential = sequential_summary(run, seed, min_chunks, target_error)
        if bench is not None:
            bench.measure_all(results)
    return EvalReport(
        corpus=str(corpus_path),
        corpus_sha256=sha256_file(corpus_path),
        corpus_tokens=n_tokens,
        ctx=plan.ctx,
        chunks=used_chunks,
        baseline=str(chosen.base) if chosen.base is not None else None,
        llama_cpp_commit=current_build().llama_cpp_commit,
        models=results,
        lora=str(lora_path) if lora_path is not None else None,
        bench=bench.settings() if bench is not None else {},
        sequential=sequential,
        flash_attn=current_flash_attn(),
        flash_attn_resolved=resolved_flash_attn(),
    )


@dataclass
class _Chosen:
    """The files to evaluate (the baseline first), the baseline (None: no KL-divergence) and
    their headers."""

    paths: list[Path]
    base: Path | None
    infos: dict[Path, GGUFInfo]

    @property
    def reference(self) -> GGUFInfo:
        """The file whose tokenizer counts the corpus: the baseline, else the first file."""
        return self.infos[self.base if self.base is not None else self.paths[0]]

    @property
    def kld(self) -> bool:
        """Whether the others are scored against the baseline's saved logits."""
        return self.base is not None and len(self.paths) > 1

    def new_results(self) -> list[ModelResult]:
        results = [_new_result(self.infos[p], is_baseline=p == self.base) for p in self.paths]
        _unique_names(results)
        return results


def _choose(models: Sequence[str | Path], baseline: str | Path | None) -> _Chosen:
    """Read the headers, pick the baseline (the first unquantized file unless given) and check
    that every file has the baseline's vocabulary."""
    infos = {p: read_gguf(p, max_array_items=0) for p in map(Path, models)}
    base = Path(baseline) if baseline is not None else None
    if base is None:
        base = next((p for p, info in infos.items() if not info.is_quantized), None)
        if base is None:
            log.warning("no unquantized model among the inputs: KL-divergence is skipped")
    paths = _order(list(infos), base)
    if base is not None and base not in infos:
        infos[base] = read_gguf(base, max_array_items=0)
    chosen = _Chosen(paths, base, infos)
    vocab = n_vocab(chosen.reference)
    for path in paths if base is not None else ():
        if n_vocab(infos[path]) != vocab:
            raise UsageError(
                f"{path} has {n_vocab(infos[path])} tokens, the baseline {base} has {vocab}",
                hint="KL-divergence compares quantizations of the same model only",
            )
    return chosen


@dataclass(frozen=True)
class _Bench:
    """llama-bench's settings for every model of one evaluation."""

    n_prompt: int
    n_gen: int
    repetitions: int
    threads: int | None

    def settings(self) -> dict[str, int]:
        return {"n_prompt": self.n_prompt, "n_gen": self.n_gen, "repetitions": self.repetitions}

    def measure(self, result: ModelResult) -> None:
        tests = benchmark(
            Path(result.path),
            n_prompt=self.n_prompt,
            n_gen=self.n_gen,
            repetitions=self.repetitions,
            threads=[self.threads] if self.threads else (),
        )
        for test in tests:
            result.threads = test.threads
            if test.kind == "pp":
                result.pp_tps, result.pp_tps_std = test.tps, test.tps_std
            else:
                result.tg_tps, result.tg_tps_std = test.tps, test.tps_std

    def measure_all(self, results: list[ModelResult]) -> None:
        with progress(len(results), "evaluating", unit="step") as bar:
            for result in results:
                self.measure(result)
                bar.update(1)


def _score_whole(
    chosen: _Chosen,
    results: list[ModelResult],
    corpus: Path,
    plan: ppl_mod.Plan,
    threads: int | None,
    tmp_dir: str | Path | None,
    bench: _Bench | None,
    lora: Path | None,
) -> int:
    """llama-perplexity on every model over the planned chunks, each followed by its bench: the
    baseline first, saving its logits for the others' KL-divergence. Returns the chunks used."""
    used_chunks = plan.chunks
    with (
        owned_temp_dir("ggufkit-eval-", tmp_dir) as work,  # a killed run's is cleared next time
        progress(len(results) * (1 if bench is None else 2), "evaluating", unit="step") as bar,
    ):
        base_file = Path(work) / "baseline.kld"
        for result in results:
            model = Path(result.path)
            paired: tuple[float | None, float | None] = (None, None)  # ΔPPL and its error
            if chosen.kld and result.is_baseline:
                vocab = n_vocab(chosen.reference)
                if vocab and plan.chunks:
                    need = plan.base_file_bytes(vocab)
                    check_free_disk(base_file, need, what="the KL-divergence base file")
                used_chunks = _perplexity(result, model, corpus, plan, threads, base_file, lora)
            elif chosen.kld:
                paired = _kl_divergence(result, model, base_file, plan.ctx, threads, lora)
            else:
                used_chunks = _perplexity(result, model, corpus, plan, threads, None, lora)
            fill_whole_corpus_intervals(result, *paired)
            bar.update(1)
            if bench is not None:
                bench.measure(result)
                bar.update(1)
    return used_chunks


def _perplexity(
    result: ModelResult,
    model: Path,
    corpus: Path,
    plan: ppl_mod.Plan,
    threads: int | None,
    save_base: Path | None,
    lora: Path | None,
) -> int:
    """Score ``model`` into ``result``; returns the chunks llama-perplexity used."""
    measured = ppl_mod.perplexity(
        model,
        corpus,
        ctx=plan.ctx,
        chunks=plan.chunks or None,
        threads=threads,
        save_base=save_base,
        lora=lora,
    )
    result.ppl, result.ppl_err = measured.ppl, measured.ppl_err
    return measured.chunks


def _kl_divergence(
    result: ModelResult,
    model: Path,
    base_file: Path,
    ctx: int,
    threads: int | None,
    lora: Path | None,
) -> tuple[float | None, float | None]:
    """Score ``model`` against the baseline's saved logits into ``result``; returns the paired
    ΔPPL and its standard error, as llama-perplexity prints them."""
    kld = ppl_mod.kl_divergence(model, base_file, ctx=ctx, threads=threads, lora=lora)
    result.ppl, result.ppl_err = kld.ppl, kld.ppl_err
    result.kld_mean, result.kld_err = kld.kld_mean, kld.kld_err
    result.kld_median, result.kld_p99, result.kld_max = kld.kld_median, kld.kld_p99, kld.kld_max
    result.top1_agreement, result.top1_err = kld.top1_agreement, kld.top1_err
    return kld.delta_ppl, kld.delta_ppl_err


def _score_sequential(
    chosen: _Chosen,
    results: list[ModelResult],
    corpus: Path,
    ctx: int,
    target: float,
    min_chunks: int,
    seed: int,
    max_chunks: int | None,
    threads: int | None,
) -> SequentialRun:
    """``--target-error``: every type against the baseline, chunk by chunk, until its intervals
    are within ``target``; the statistics go into ``results``."""
    if chosen.base is None:
        raise UsageError(
            "--target-error needs a baseline",
            hint="give an F16/BF16/F32 model or --baseline",
        )
    run = run_sequential(
        chosen.base,
        [p for p in chosen.paths if p != chosen.base],
        corpus,
        ctx=ctx,
        target=target,
        min_chunks=min_chunks,
        seed=seed,
        max_chunks=max_chunks,
        threads=threads,
    )
    fill_results(results, run)
    return run
