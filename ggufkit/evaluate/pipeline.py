"""``evaluate()``: size, bits per weight, perplexity, KL-divergence and speed for a set of GGUFs."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError
from ggufkit.core.fsutil import check_free_disk, sha256_file
from ggufkit.core.log import get_logger, progress
from ggufkit.core.partials import owned_temp_dir
from ggufkit.evaluate import ppl as ppl_mod
from ggufkit.evaluate.batchscore import default_threads
from ggufkit.evaluate.intervals import DEFAULT_MIN_CHUNKS
from ggufkit.evaluate.results import EvalReport, ModelResult, fill_whole_corpus_intervals
from ggufkit.evaluate.sequential import fill_results, run_sequential, sequential_summary
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
    infos = {p: read_gguf(p, max_array_items=0) for p in map(Path, models)}
    lora_path, speed = _check_lora(
        lora, [*infos, *([Path(baseline)] if baseline else [])], target_error, speed
    )
    base_path = Path(baseline) if baseline is not None else None
    if base_path is None:
        base_path = next((p for p, info in infos.items() if not info.is_quantized), None)
        if base_path is None:
            log.warning("no unquantized model among the inputs: KL-divergence is skipped")
    paths = _order(list(infos), base_path)
    if base_path is not None and base_path not in infos:
        infos[base_path] = read_gguf(base_path, max_array_items=0)
    results = [_new_result(infos[p], is_baseline=p == base_path) for p in paths]
    _unique_names(results)
    base_info = infos[base_path] if base_path is not None else infos[paths[0]]
    vocab = n_vocab(base_info)
    for path in paths:
        if base_path is not None and n_vocab(infos[path]) != vocab:
            raise UsageError(
                f"{path} has {n_vocab(infos[path])} tokens, the baseline {base_path} has {vocab}",
                hint="KL-divergence compares quantizations of the same model only",
            )

    if target_error is not None and threads is None:
        threads = default_threads()  # the scorer's count is llama-perplexity's
    n_tokens = ppl_mod.count_tokens(base_info.path, corpus_path)
    plan = ppl_mod.plan(
        n_tokens,
        ctx=ctx,
        chunks=chunks,
        n_ctx_train=n_ctx_train(base_info),
        kld=base_path is not None and len(paths) > 1,
        corpus=corpus_path,
    )
    log.info(
        "evaluating %d model(s) on %s: %s tokens, context %d, %s chunks",
        len(paths),
        corpus_path.name,
        n_tokens if n_tokens is not None else "?",
        plan.ctx,
        plan.chunks or "all",
    )
    sequential = None
    if target_error is not None:
        if base_path is None:
            raise UsageError(
                "--target-error needs a baseline",
                hint="give an F16/BF16/F32 model or --baseline",
            )
        sequential = run_sequential(
            base_path,
            [p for p in paths if p != base_path],
            corpus_path,
            ctx=plan.ctx,
            target=target_error,
            min_chunks=min_chunks,
            seed=seed,
            max_chunks=chunks,
            threads=threads,
        )
        fill_results(results, sequential)
    steps = len(paths) * (2 if speed else 1) if sequential is None else len(paths) * speed
    with (
        owned_temp_dir("ggufkit-eval-", tmp_dir) as work,  # a killed run's is cleared next time
        progress(steps, "evaluating", unit="step") as bar,
    ):
        base_file = Path(work) / "baseline.kld"
        used_chunks = plan.chunks if sequential is None else sequential.base_chunks
        for result in results:
            model = Path(result.path)
            if sequential is not None:
                pass  # measured above
            elif result.is_baseline and len(paths) > 1:
                if vocab and plan.chunks:
                    check_free_disk(
                        base_file, plan.base_file_bytes(vocab), what="the KL-divergence base file"
                    )
                measured = ppl_mod.perplexity(
                    model,
                    corpus_path,
                    ctx=plan.ctx,
                    chunks=plan.chunks or None,
                    threads=threads,
                    save_base=base_file,
                    lora=lora_path,
                )
                result.ppl, result.ppl_err, used_chunks = (
                    measured.ppl,
                    measured.ppl_err,
                    measured.chunks,
                )
            elif base_path is not None and len(paths) > 1:
                kld = ppl_mod.kl_divergence(
                    model, base_file, ctx=plan.ctx, threads=threads, lora=lora_path
                )
                result.ppl, result.ppl_err = kld.ppl, kld.ppl_err
                result.kld_mean, result.kld_err = kld.kld_mean, kld.kld_err
                result.kld_median, result.kld_p99, result.kld_max = (
                    kld.kld_median,
                    kld.kld_p99,
                    kld.kld_max,
                )
                result.top1_agreement, result.top1_err = kld.top1_agreement, kld.top1_err
                fill_whole_corpus_intervals(result, kld.delta_ppl, kld.delta_ppl_err)
            else:
                measured = ppl_mod.perplexity(
                    model,
                    corpus_path,
                    ctx=plan.ctx,
                    chunks=plan.chunks or None,
                    threads=threads,
                    lora=lora_path,
                )
                result.ppl, result.ppl_err, used_chunks = (
                    measured.ppl,
                    measured.ppl_err,
                    measured.chunks,
                )
            if sequential is None:
                fill_whole_corpus_intervals(result)
                bar.update(1)
            if speed:
                tests = benchmark(
                    model,
                    n_prompt=n_prompt,
                    n_gen=n_gen,
                    repetitions=repetitions,
                    threads=[threads] if threads else (),
                )
                for test in tests:
                    result.threads = test.threads
                    if test.kind == "pp":
                        result.pp_tps, result.pp_tps_std = test.tps, test.tps_std
                    else:
                        result.tg_tps, result.tg_tps_std = test.tps, test.tps_std
                bar.update(1)
    return EvalReport(
        corpus=str(corpus_path),
        corpus_sha256=sha256_file(corpus_path),
        corpus_tokens=n_tokens,
        ctx=plan.ctx,
        chunks=used_chunks,
        baseline=str(base_path) if base_path is not None else None,
        llama_cpp_commit=current_build().llama_cpp_commit,
        models=results,
        lora=str(lora_path) if lora_path is not None else None,
        bench={"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions} if speed else {},
        sequential=None
        if sequential is None
        else sequential_summary(sequential, seed, min_chunks, target_error),
        flash_attn=current_flash_attn(),
        flash_attn_resolved=resolved_flash_attn(),
    )


def _check_lora(
    lora: str | Path | None, models: Sequence[Path], target_error: float | None, speed: bool
) -> tuple[Path | None, bool]:
    """The LoRA GGUF, checked against every model before any runs; whether speed is measured."""
    if lora is None:
        return None, speed
    if target_error is not None:
        raise UsageError(
            "--lora and --target-error cannot be combined yet",
            hint="score the whole corpus (leave --target-error out), or evaluate a merged GGUF",
        )
    from ggufkit.formats.gguf_lora import check_lora_fits

    for model in models:
        check_lora_fits(model, lora)
    if speed:
        log.info("llama-bench cannot apply a LoRA adapter: speed is not measured with --lora")
    return Path(lora), False
