"""Human-readable reports: the guide's Markdown table and bench's (plots: `evaluate.plots`).

Every number shown comes from the result objects whose ``to_json()`` gives ``--json``, so the table
and the JSON always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ggufkit.core.fsutil import human_bytes
from ggufkit.core.text import markdown_table
from ggufkit.evaluate.plots import (  # noqa: F401  (the plot's home; importers use either)
    PLOT_SIZE_PX,
    new_figure,
    plot_eval,
    save_figure,
)
from ggufkit.evaluate.results import EvalReport, ModelResult, SpeedResult

BASELINE_CELL = "(baseline)"
MISSING_CELL = "—"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return MISSING_CELL if value is None else f"{value:{spec}}{suffix}"


def _measures(report: EvalReport) -> list[tuple[str, Callable[[ModelResult], str]]]:
    """The table's rows. Every "±" on quality is the half-width of a 95 % interval (paired with
    the baseline for ΔPPL, KLD and top token) in both modes; on speed it is the standard
    deviation over llama-bench's repetitions."""
    threads = {m.threads for m in report.models if m.threads}
    at = f" @ {threads.pop()}th" if len(threads) == 1 else ""

    def relative(value: Callable[[ModelResult], str]) -> Callable[[ModelResult], str]:
        return lambda m: BASELINE_CELL if m.is_baseline else value(m)

    measures: list[tuple[str, Callable[[ModelResult], str]]] = [
        ("perplexity", lambda m: _pm(m.ppl, m.ppl_half, ".4f"))
    ]
    if report.baseline is not None and len(report.models) > 1:
        measures += [
            ("ΔPPL vs baseline", relative(lambda m: _pm(m.delta_ppl, m.delta_ppl_ci, "+.4f"))),
            ("KL-divergence", relative(lambda m: _pm(m.kld_mean, m.kld_half, ".6f"))),
            (
                "same top token %",
                relative(lambda m: _pm(m.top1_agreement, m.top1_half, ".2f", 100)),
            ),
        ]
    if report.sequential is not None:
        measures.append(("chunks scored", lambda m: _fmt(m.chunks, "d")))
        # worth a row only when some type scored from scratch (not all from the cache)
        if any(m.eval_seconds and m.eval_seconds >= 0.05 for m in report.models):
            measures.append(("scoring time", lambda m: _fmt(m.eval_seconds, ".1f", " s")))
        if any(m.eval_seconds_saved for m in report.models):
            measures.append(("time saved", lambda m: _fmt(m.eval_seconds_saved, ".1f", " s")))
    measures += [
        ("file size", lambda m: human_bytes(m.size_bytes)),
        ("bits/weight", lambda m: _fmt(m.bpw, ".2f")),
    ]
    if any(m.pp_tps for m in report.models):
        measures.append((f"prompt tok/s{at}", lambda m: _speed(m.pp_tps, m.pp_tps_std)))
    if any(m.tg_tps for m in report.models):
        measures.append((f"gen tok/s{at}", lambda m: _speed(m.tg_tps, m.tg_tps_std)))
    return measures


def _pm(value: float | None, half: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return MISSING_CELL
    text = f"{scale * value:{spec}}"
    return text if half is None else f"{text} ± {scale * half:{spec.lstrip('+')}}"


def _speed(tps: float | None, std: float | None) -> str:
    """Tokens/s ± the standard deviation, both to the same whole decimals."""
    if tps is None:
        return MISSING_CELL
    spec = ".0f" if tps >= 100 else ".2f"
    return f"{tps:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")


def eval_table(report: EvalReport) -> str:
    """The quantization guide's table: rows Model × Measure, one column per file (F16 | Q4_0 | …)."""
    header = ["Model", "Measure", *(m.name for m in report.models)]
    rows = []
    labels = list(dict.fromkeys(m.model for m in report.models))
    for label in labels:
        for measure, cell in _measures(report):
            rows.append(
                [
                    label,
                    measure,
                    *(cell(m) if m.model == label else "" for m in report.models),
                ]
            )
    table = markdown_table(header, rows, "rl" + "r" * len(report.models))
    chunks = f"{report.chunks} chunks of {report.ctx} tokens"
    note = f"Corpus {Path(report.corpus).name} ({chunks})"
    if report.baseline is not None:
        note += f"; KL-divergence and top token against {Path(report.baseline).name}"
    if report.flash_attn_resolved is not None:
        note += f"; flash attention {report.flash_attn_resolved} (-fa {report.flash_attn})"
    return f"{table}\n\n{note}.\n{_pm_note(report)}" + _mix_note(report) + _sequential_note(report)


def _pm_note(report: EvalReport) -> str:
    """What "±" means, once for the whole table."""
    paired = report.baseline is not None and len(report.models) > 1
    speed = any(m.tg_tps or m.pp_tps for m in report.models)
    if paired:
        text = (
            f"± on quality: the half-width of a 95 % interval ({report.interval_method}; "
            "ΔPPL, KLD and top token paired with the baseline; docs/eval-intervals.md). "
            "Lower is better for perplexity, ΔPPL and KLD; higher for top token"
            + (" and tok/s." if speed else ".")
        )
    else:
        text = (
            f"± on perplexity: the half-width of a 95 % interval ({report.interval_method}); "
            "lower is better."
        )
    if speed:
        reps = report.bench.get("repetitions")
        text += f" ± on tok/s: the standard deviation over {reps or 'the'} llama-bench runs."
    return text


def _mix_note(report: EvalReport) -> str:
    """Each quantized file's real tensor types, and what fell back (a Q4_K_M of 576-wide rows
    is mostly Q5_0), read from the files' headers."""
    from ggufkit.core.errors import GGUFFormatError
    from ggufkit.quantize.types import read_tensor_mix

    lines = []
    for m in report.models:
        try:
            mix = read_tensor_mix(Path(m.path))
        except GGUFFormatError:  # a report read back after the file went
            continue
        if mix.fallback or mix.file_type not in (None, "F16", "BF16", "F32"):
            lines.append(
                f"{m.name} tensors: {mix.counts_text()}"
                + (f" ({mix.note()})" if mix.note() else "")
            )
    return "".join(f"\n{line}." for line in lines)


def _sequential_note(report: EvalReport) -> str:
    run = report.sequential
    if run is None:
        return ""
    saved = run.get("seconds_saved")
    return (
        f"\nStopped at "
        f"{100 * run['target']:.3g}% (ΔPPL relative to the baseline's perplexity, KLD in nats, "
        f"top token as a fraction), at least {run['min_chunks']} chunks, in a random order "
        f"(seed {run['seed']}) of {run['corpus_chunks']}: {run['tokens_scored']} tokens scored "
        f"of {run['tokens_full']} for the full corpus, {run['seconds']:.1f} s"
        + (f", about {saved:.0f} s saved" if saved is not None else "")
        + f"; {run['cache_hits']} chunk results from the cache. Each perplexity is over the "
        "chunks its type scored: compare types by ΔPPL, which is paired."
    )


def bench_table(results: Sequence[SpeedResult], sizes: dict[str, int] | None = None) -> str:
    """One row per model, thread count and test, like llama-bench's own Markdown."""
    header = ["model", "size", "threads", "test", "t/s", "ms/token", "flash attn"]
    rows = [
        [
            Path(r.model).name,
            human_bytes((sizes or {}).get(r.model, 0)) if sizes else MISSING_CELL,
            str(r.threads),
            r.test,
            f"{r.tps:.2f} ± {r.tps_std:.2f}",
            f"{r.ms_per_token:.3f}",
            r.flash_attn or MISSING_CELL,
        ]
        for r in results
    ]
    return markdown_table(header, rows, "lrrrrrl")
