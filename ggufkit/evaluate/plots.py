"""The eval plot: quality (ΔPPL and KL-divergence against the baseline, with paired 95 %
intervals) and generation speed (with its spread) against file size, and a caption that says
what the bars mean, on which corpus, and which way is better.

Also the figure helpers every ggufkit plot uses (``compare`` too): an off-screen figure, labels
that do not overlap, an atomic save.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ggufkit.core.errors import ToolMissingError, UsageError
from ggufkit.core.fsutil import atomic_output
from ggufkit.evaluate.results import EvalReport, ModelResult

PLOT_SIZE_INCHES = (15.0, 5.4)
PLOT_DPI = 100
PLOT_SIZE_PX = (int(PLOT_SIZE_INCHES[0] * PLOT_DPI), int(PLOT_SIZE_INCHES[1] * PLOT_DPI))
CAPTION_HEIGHT = 0.11  # the share of the figure's height kept for the caption
QUALITY = "tab:blue"
BASELINE = "tab:green"
SPEED = "tab:purple"


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


def save_figure(figure: Any, out: Path, caption: str | None = None) -> Path:
    """Lay the figure out (the caption, if any, in a band at the bottom) and write it."""
    if caption:
        figure.text(0.01, 0.01, caption, ha="left", va="bottom", fontsize=9, wrap=True)
        figure.tight_layout(rect=(0, CAPTION_HEIGHT, 1, 1))
    else:
        figure.tight_layout()
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    return out


def label_offsets(
    points: list[tuple[str, float, float]],
) -> list[tuple[str, float, float, tuple[int, int]]]:
    """Offsets (points) for labels centred above (name, x, y) anchors: a label whose anchor is
    near one already placed goes one line higher, so that none overlap."""
    if not points:
        return []
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[str, float, float, tuple[int, int]]] = []
    for name, x, y in sorted(points, key=lambda p: (p[2], p[1])):
        near = [q for q in placed if abs(q[1] - x) < 0.12 * dx and abs(q[2] - y) < 0.08 * dy]
        placed.append((name, x, y, (0, 7 + 12 * len(near))))
    return placed


def size_unit(sizes: list[int]) -> tuple[str, int]:
    unit, scale = "B", 1
    for name, size in (("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)):
        if max(sizes) >= size:
            unit, scale = name, size
    return unit, scale


def _points(
    ax: Any,
    models: list[ModelResult],
    value: Callable[[ModelResult], float | None],
    half: Callable[[ModelResult], float | None],
    scale: int,
    color: str,
    *,
    log: bool = False,
) -> list[tuple[str, float, float]]:
    """Points with their bars (none where ``half`` is None); returns what to label."""
    shown = [m for m in models if value(m) is not None]
    xs = [m.size_bytes / scale for m in shown]
    ys = [float(value(m) or 0.0) for m in shown]
    low, high = [], []
    for m, y in zip(shown, ys, strict=True):
        h = half(m)
        h = 0.0 if h is None or h != h or h == float("inf") else h
        # on a log axis a bar reaching zero or below is drawn to the bottom of the panel
        low.append(min(h, 0.999 * y) if log and y > 0 else h)
        high.append(h)
    ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color=color, ecolor=color, capsize=4)
    return [(m.name, x, y + h) for m, x, y, h in zip(shown, xs, ys, high, strict=True)]


def _finish(ax: Any, labels: list[tuple[str, float, float]], unit: str, title: str) -> None:
    for name, x, y, offset in label_offsets(labels):
        ax.annotate(
            name, (x, y), textcoords="offset points", xytext=offset, fontsize=9, ha="center"
        )
    ax.set_xlabel(f"file size ({unit})")
    ax.set_title(title, fontsize=11)
    ax.margins(x=0.2, y=0.18)  # room for the labels
    ax.grid(True, alpha=0.3)


def eval_caption(report: EvalReport) -> str:
    """What the bars mean, on which corpus, and which way is better."""
    corpus = Path(report.corpus).name
    head = f"Corpus {corpus}: {report.chunks} chunks of {report.ctx} tokens."
    if report.baseline is None:
        quality = (
            "Bars on perplexity: 95 % intervals (unpaired: no baseline was given). Lower is better."
        )
    else:
        quality = (
            f"Bars on ΔPPL and KLD: 95 % intervals, paired against {Path(report.baseline).name} "
            f"({report.interval_method}). Lower is better; a ΔPPL interval that covers 0 is no "
            "measurable loss."
        )
    reps = report.bench.get("repetitions")
    speed = ""
    if any(m.tg_tps for m in report.models):
        threads = {m.threads for m in report.models if m.threads}
        at = f", {threads.pop()} threads" if len(threads) == 1 else ""
        speed = (
            f" Speed: llama-bench generation, bars ±1 standard deviation over {reps} runs{at};"
            " higher is better."
        )
    return f"{head} {quality}{speed}"


def plot_eval(report: EvalReport, out: str | Path) -> Path:
    """A PNG: ΔPPL and KL-divergence against file size (paired 95 % intervals), then generation
    speed (± its standard deviation); one labelled point per file and a caption."""
    out, figure = new_figure(out, "eval.png", PLOT_SIZE_INCHES)
    measured = [m for m in report.models if m.ppl is not None]
    if not measured:
        raise UsageError("nothing to plot: no perplexity was measured")
    paired = report.baseline is not None and any(m.delta_ppl is not None for m in measured)
    base = report.baseline_result
    quality = [m for m in measured if m.delta_ppl is not None and not m.is_baseline]
    with_kld = [m for m in measured if m.kld_mean is not None and not m.is_baseline]
    timed = [m for m in report.models if m.tg_tps]
    panels = (2 if paired and with_kld else 1) + bool(timed)
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    unit, scale = size_unit([m.size_bytes for m in report.models])
    base_name = base.name if base is not None else "baseline"
    ax = axes.pop(0)
    if paired:
        labels = _points(
            ax, quality, lambda m: m.delta_ppl, lambda m: m.delta_ppl_ci, scale, QUALITY
        )
        if base is not None:
            ax.plot([base.size_bytes / scale], [0.0], "D", color=BASELINE)
            labels.append((f"{base_name} (baseline)", base.size_bytes / scale, 0.0))
        ax.axhline(0.0, color=BASELINE, linestyle="--", linewidth=1)
        ax.set_ylabel(f"PPL(type) − PPL({base_name})")
        _finish(ax, labels, unit, f"Perplexity change vs {base_name} (lower is better)")
    else:
        labels = _points(ax, measured, lambda m: m.ppl, lambda m: m.ppl_half, scale, QUALITY)
        ax.set_ylabel("perplexity")
        _finish(ax, labels, unit, "Perplexity (lower is better)")
    if paired and with_kld:
        ax = axes.pop(0)
        values = [m.kld_mean or 0.0 for m in with_kld]
        log = min(values) > 0 and max(values) / min(values) > 20
        labels = _points(
            ax, with_kld, lambda m: m.kld_mean, lambda m: m.kld_half, scale, QUALITY, log=log
        )
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("mean KL-divergence (nats/token)")
        _finish(ax, labels, unit, f"KL-divergence vs {base_name} (lower is better)")
    if timed:
        ax = axes.pop(0)
        labels = _points(ax, timed, lambda m: m.tg_tps, lambda m: m.tg_tps_std, scale, SPEED)
        ax.set_ylabel("generated tokens/s")
        ax.set_ylim(0, 1.2 * max((m.tg_tps or 0) + (m.tg_tps_std or 0) for m in timed))
        _finish(ax, labels, unit, "Generation speed (higher is better)")
    figure.suptitle(", ".join(dict.fromkeys(m.model for m in report.models)), fontsize=12)
    return save_figure(figure, out, eval_caption(report))
