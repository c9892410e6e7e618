"""Human-readable reports: the guide's Markdown table, the size/quality plot, bench and inspect text.

Every number shown comes from the result objects whose ``to_json()`` gives ``--json``, so the table
and the JSON always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ggufkit.core.errors import ToolMissingError, UsageError
from ggufkit.core.fsutil import atomic_output, human_bytes
from ggufkit.core.text import printable
from ggufkit.evaluate.results import EvalReport, ModelResult, SpeedResult
from ggufkit.formats.ggufinfo import ArraySummary, GGUFInfo

PLOT_SIZE_INCHES = (10.0, 4.5)
PLOT_DPI = 100
PLOT_SIZE_PX = (int(PLOT_SIZE_INCHES[0] * PLOT_DPI), int(PLOT_SIZE_INCHES[1] * PLOT_DPI))
BASELINE_CELL = "(baseline)"
MISSING_CELL = "—"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` has one of ``l``/``r`` per column; control characters in a
    cell (a model's name from its file) are shown escaped."""
    header = [printable(c) for c in header]
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
            for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return MISSING_CELL if value is None else f"{value:{spec}}{suffix}"


def _measures(report: EvalReport) -> list[tuple[str, Callable[[ModelResult], str]]]:
    threads = {m.threads for m in report.models if m.threads}
    at = f" @ {threads.pop()}th" if len(threads) == 1 else ""

    def ppl(m: ModelResult) -> str:
        if m.ppl is None:
            return MISSING_CELL
        return f"{m.ppl:.4f}" + (f" ± {m.ppl_err:.4f}" if m.ppl_err is not None else "")

    def relative(value: Callable[[ModelResult], str]) -> Callable[[ModelResult], str]:
        return lambda m: BASELINE_CELL if m.is_baseline else value(m)

    measures: list[tuple[str, Callable[[ModelResult], str]]] = [("perplexity", ppl)]
    if report.sequential is not None:
        measures = _interval_measures(relative)
    elif report.baseline is not None:
        measures += [
            ("KL-divergence", relative(lambda m: _fmt(m.kld_mean, ".6f"))),
            (
                "same top token",
                relative(
                    lambda m: _fmt(
                        None if m.top1_agreement is None else 100 * m.top1_agreement, ".2f", "%"
                    )
                ),
            ),
        ]
    measures += [
        ("file size", lambda m: human_bytes(m.size_bytes)),
        ("bits/weight", lambda m: _fmt(m.bpw, ".2f")),
    ]
    if any(m.tg_tps or m.pp_tps for m in report.models):
        measures += [
            (f"ms/tok{at}", lambda m: _fmt(m.ms_per_token, ".2f")),
            (f"prompt tok/s{at}", lambda m: _fmt(m.pp_tps, ".2f")),
            (f"gen tok/s{at}", lambda m: _fmt(m.tg_tps, ".2f")),
        ]
    return measures


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
    return f"{table}\n\n{note}." + _mix_note(report) + _sequential_note(report)


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


def _interval_measures(
    relative: Callable[[Callable[[ModelResult], str]], Callable[[ModelResult], str]],
) -> list[tuple[str, Callable[[ModelResult], str]]]:
    """--target-error rows: each estimate with the half-width of its 95 % interval."""

    def pm(value: float | None, half: float | None, spec: str, scale: float = 1.0) -> str:
        if value is None or half is None:
            return MISSING_CELL
        return f"{scale * value:{spec}} ± {scale * half:{spec.lstrip('+')}}"

    def seconds(value: float | None) -> str:
        return _fmt(value, ".1f", " s")

    return [
        ("perplexity", lambda m: pm(m.ppl, m.ppl_ci, ".4f")),
        ("ΔPPL vs baseline", relative(lambda m: pm(m.delta_ppl, m.delta_ppl_ci, "+.4f"))),
        ("KL-divergence", relative(lambda m: pm(m.kld_mean, m.kld_ci, ".6f"))),
        ("same top token %", relative(lambda m: pm(m.top1_agreement, m.top1_ci, ".2f", 100))),
        ("chunks scored", lambda m: _fmt(m.chunks, "d")),
        ("scoring time", lambda m: seconds(m.eval_seconds)),
        ("time saved", lambda m: seconds(m.eval_seconds_saved)),
    ]


def _sequential_note(report: EvalReport) -> str:
    run = report.sequential
    if run is None:
        return ""
    saved = run.get("seconds_saved")
    return (
        f"\n± is the half-width of a 95 % interval (docs/eval-intervals.md). Stopped at "
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


def new_figure(out: str | Path, example: str, size_inches: tuple[float, float]) -> tuple[Path, Any]:
    """Check ``out`` (a .png) and matplotlib, then a Figure drawn off-screen (no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ToolMissingError(
            "--plot needs matplotlib", hint="pip install 'ggufkit[plot]' (or matplotlib)"
        ) from exc
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"the plot {out} must be a .png file", hint=f"e.g. --plot {example}")
    figure = Figure(figsize=size_inches, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    return out, figure


def save_figure(figure: Any, out: Path) -> Path:
    figure.tight_layout()
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    return out


def plot_eval(report: EvalReport, out: str | Path) -> Path:
    """A PNG: perplexity vs file size and KL-divergence vs file size, one labelled point per file."""
    out, figure = new_figure(out, "eval.png", PLOT_SIZE_INCHES)
    measured = [m for m in report.models if m.ppl is not None]
    if not measured:
        raise UsageError("nothing to plot: no perplexity was measured")
    with_kld = [m for m in measured if m.kld_mean is not None]
    panels = 2 if with_kld else 1
    axes = figure.subplots(1, panels, squeeze=False)[0]
    unit, scale = "B", 1
    for name, size in (("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)):
        if max(m.size_bytes for m in measured) >= size:
            unit, scale = name, size

    def scatter(ax: Any, models: list[ModelResult], y: Callable[[ModelResult], float]) -> None:
        xs = [m.size_bytes / scale for m in models]
        ys = [y(m) for m in models]
        ax.plot(xs, ys, "o", color="tab:blue")
        for m, x, value in zip(models, xs, ys, strict=True):
            ax.annotate(m.name, (x, value), textcoords="offset points", xytext=(5, 5), fontsize=9)
        ax.set_xlabel(f"file size ({unit})")
        ax.margins(x=0.15, y=0.12)  # room for the labels
        ax.grid(True, alpha=0.3)

    scatter(axes[0], measured, lambda m: m.ppl or 0.0)
    errors = [m.ppl_err or 0.0 for m in measured]
    axes[0].errorbar(
        [m.size_bytes / scale for m in measured],
        [m.ppl or 0.0 for m in measured],
        yerr=errors,
        fmt="none",
        ecolor="tab:gray",
    )
    axes[0].set_ylabel("perplexity")
    axes[0].set_title(f"Perplexity (ctx {report.ctx}, {report.chunks} chunks)")
    if with_kld:
        scatter(axes[1], with_kld, lambda m: m.kld_mean or 0.0)
        if all((m.kld_mean or 0) > 0 for m in with_kld):
            axes[1].set_yscale("log")
        axes[1].set_ylabel("mean KL-divergence (nats/token)")
        axes[1].set_title(f"KL-divergence vs {Path(report.baseline or '').name}")
    figure.suptitle(", ".join(dict.fromkeys(m.model for m in report.models)))
    return save_figure(figure, out)


def _value_text(value: Any, width: int = 100) -> str:
    if isinstance(value, ArraySummary):
        head = ", ".join(repr(v) for v in value.head)
        more = ", …" if value.length > len(value.head) else ""
        return f"[{value.item_type} × {value.length}: {head}{more}]"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= width else text[: width - 1] + "…'"
    if isinstance(value, list):
        return repr(value)
    return str(value)


def inspect_text(info: GGUFInfo, *, tensors: bool = False) -> str:
    """What ``ggufkit inspect`` prints: header, summary, metadata (long arrays summarised)."""
    bpw = info.bits_per_weight
    types = ", ".join(f"{name} ×{count}" for name, count in info.tensor_types.most_common())
    lines = [
        f"file:          {info.path}",
        f"size:          {human_bytes(info.file_size)} ({info.file_size:,} bytes)",
        f"GGUF:          version {info.version}, {info.byte_order}-endian, "
        f"alignment {info.alignment}, data at byte {info.data_offset:,}",
        f"architecture:  {info.architecture or MISSING_CELL}",
        f"file type:     {info.file_type_name or MISSING_CELL}",
        f"parameters:    {info.parameter_count:,}",
        f"bits/weight:   {_fmt(bpw, '.2f')}",
        f"tensors:       {len(info.tensors)} ({types or 'none'})",
        f"metadata:      {len(info.metadata)} keys",
    ]
    for key, value in info.summarized_metadata().items():
        kind = info.metadata_types.get(key, "")
        lines.append(f"  {key} ({kind}) = {_value_text(value)}")
    if tensors:
        header = ["name", "type", "shape", "bytes"]
        rows = [
            [
                t.name,
                t.type_name,
                "×".join(str(d) for d in t.shape),
                f"{t.n_bytes:,}" if t.n_bytes is not None else MISSING_CELL,
            ]
            for t in info.tensors
        ]
        return "\n".join([*map(printable, lines), "", markdown_table(header, rows, "llrr")])
    return "\n".join(map(printable, lines))


def inspect_json(info: GGUFInfo, *, tensors: bool = False) -> dict[str, Any]:
    data = info.to_json()
    data["tensor_count"] = len(info.tensors)
    data["file_size_human"] = human_bytes(info.file_size)
    if not tensors:
        data.pop("tensors", None)
    return data
