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
PALETTE = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:cyan", "tab:olive")
LEGEND_WIDTH = 0.1  # the share of the figure's width kept for the legend


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


def save_figure(figure: Any, out: Path, caption: str | None = None, *, right: float = 1.0) -> Path:
    """Lay the figure out (the caption, if any, in a band at the bottom; the panels left of
    ``right``, a share of the width) and write it."""
    if caption:
        figure.text(0.01, 0.01, caption, ha="left", va="bottom", fontsize=9, wrap=True)
        figure.tight_layout(rect=(0, CAPTION_HEIGHT, right, 1))
    else:
        figure.tight_layout()
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    return out


def label_offsets(
    points: list[tuple[str, float, float]],
) -> list[tuple[str, float, float, tuple[int, int]]]:
    """Offsets (points) for labels centred on (name, x, y) anchors: above the anchor, below it
    when another point sits just above, and a line further out where an anchor is near one
    already placed, so that no label covers a point or another label."""
    if not points:
        return []
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[str, float, float, tuple[int, int]]] = []
    for name, x, y in sorted(points, key=lambda p: (p[2], p[1])):
        crowded_above = any(
            abs(ox - x) < 0.12 * dx and 0 < oy - y < 0.25 * dy for _, ox, oy in points
        )
        side = -1 if crowded_above else 1
        near = [
            q
            for q in placed
            if abs(q[1] - x) < 0.12 * dx and abs(q[2] - y) < 0.08 * dy and q[3][1] * side > 0
        ]
        base = 7 if side > 0 else -16
        placed.append((name, x, y, (0, base + side * 12 * len(near))))
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
    colors: dict[str, str],
    *,
    log: bool = False,
) -> None:
    """One point per model in its own colour (the legend names it), with its bar (none where
    ``half`` is None): no text on the panel that could cover a neighbour's bar."""
    for m in models:
        y = value(m)
        if y is None:
            continue
        h = half(m)
        h = 0.0 if h is None or h != h or h == float("inf") else h
        # on a log axis a bar reaching zero or below is drawn to the bottom of the panel
        low = min(h, 0.999 * y) if log and y > 0 else h
        color = colors.get(m.name, "black")
        ax.errorbar(
            [m.size_bytes / scale],
            [y],
            yerr=[[low], [h]],
            fmt="o",
            color=color,
            capsize=4,
            markersize=7,
            label=m.name,
        )


def _finish(ax: Any, unit: str, title: str) -> None:
    ax.set_xlabel(f"file size ({unit})")
    ax.set_title(title, fontsize=11)
    ax.margins(x=0.12, y=0.12)
    ax.grid(True, alpha=0.3)


def type_colors(models: list[ModelResult]) -> dict[str, str]:
    """A colour per file, the same in every panel; the baseline black."""
    others = [m.name for m in models if not m.is_baseline]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(others)}
    colors.update({m.name: "black" for m in models if m.is_baseline})
    return colors


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
    colors = type_colors(report.models)
    ax = axes.pop(0)
    if paired:
        _points(ax, quality, lambda m: m.delta_ppl, lambda m: m.delta_ppl_ci, scale, colors)
        if base is not None:
            ax.plot([base.size_bytes / scale], [0.0], "D", color="black", label=base.name)
        ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_ylabel(f"PPL(type) − PPL({base_name})")
        _finish(ax, unit, f"Perplexity change vs {base_name} (lower is better)")
    else:
        _points(ax, measured, lambda m: m.ppl, lambda m: m.ppl_half, scale, colors)
        ax.set_ylabel("perplexity")
        _finish(ax, unit, "Perplexity (lower is better)")
    if paired and with_kld:
        ax = axes.pop(0)
        values = [m.kld_mean or 0.0 for m in with_kld]
        log = min(values) > 0 and max(values) / min(values) > 20
        _points(ax, with_kld, lambda m: m.kld_mean, lambda m: m.kld_half, scale, colors, log=log)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("mean KL-divergence (nats/token)")
        _finish(ax, unit, f"KL-divergence vs {base_name} (lower is better)")
    if timed:
        ax = axes.pop(0)
        _points(ax, timed, lambda m: m.tg_tps, lambda m: m.tg_tps_std, scale, colors)
        ax.set_ylabel("generated tokens/s")
        _finish(ax, unit, "Generation speed (higher is better)")
        ax.set_ylim(0, 1.1 * max((m.tg_tps or 0) + (m.tg_tps_std or 0) for m in timed))
    handles: dict[str, Any] = {}
    for panel in figure.axes:
        for handle, label in zip(*panel.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = [m.name for m in report.models if m.name in handles]
    figure.legend(
        [handles[n] for n in order],
        [f"{n} (baseline)" if base is not None and n == base.name else n for n in order],
        loc="center right",
        fontsize=10,
        title="file",
    )
    figure.suptitle(", ".join(dict.fromkeys(m.model for m in report.models)), fontsize=12)
    return save_figure(figure, out, eval_caption(report), right=1 - LEGEND_WIDTH)
