"""``ggufkit compare``: GGUF types (``ggufkit eval --json``) and bitsandbytes modes
(``ggufkit bnb --json``) in one table and one plot: size, speed, perplexity, KL-divergence.

The two families are measured by different engines, so the table says what each column means for
each family, and notes where the numbers do not compare: different corpora or contexts, or
tokenizers that cut the same corpus into a different number of tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError
from ggufkit.core.fsutil import human_bytes, read_json
from ggufkit.evaluate.results import normal_half

GGUF = "GGUF"
BNB = "bnb"
MISSING = "—"
PLOT_SIZE_INCHES = (18.0, 5.2)
MARKERS = {GGUF: ("o", "tab:blue"), BNB: ("s", "tab:orange")}


@dataclass
class Row:
    family: str  # GGUF or bnb
    name: str
    size_bytes: int | None  # GGUF: file size; bnb: model footprint in memory
    bpw: float | None
    tokens_per_s: float | None  # GGUF: llama-bench generation; bnb: transformers generate
    ppl: float | None
    ppl_err: float | None = None
    kld_mean: float | None = None  # against the family's own baseline
    top1_agreement: float | None = None
    mean_abs_dlogit: float | None = None
    is_baseline: bool = False
    ppl_half: float | None = None  # the half-width of its 95 % interval (unpaired)


@dataclass
class Comparison:
    eval_file: str
    bnb_file: str
    device: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_report(path: str | Path, what: str) -> Any:
    """The JSON report ``ggufkit WHAT --json`` wrote to ``path``."""
    return read_json(path, InputError, hint=f"write it with `ggufkit {what} ... --json > {path}`")


def _records(data: Any, key: str, path: Path, what: str) -> tuple[dict[str, Any], list[Any]]:
    """(header, per-model records) of a report, or of a bare list of records."""
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return data, data[key]
    raise InputError(
        f"{path} is not the output of `ggufkit {what} --json` (no {key!r} list)",
        hint=f"write it with `ggufkit {what} ... --json > {path.name}`",
        path=path,
    )


def gguf_rows(records: list[Any]) -> list[Row]:
    return [
        Row(
            family=GGUF,
            name=str(r.get("name") or r.get("type") or Path(str(r.get("path", "?"))).stem),
            size_bytes=r.get("size_bytes"),
            bpw=r.get("bpw"),
            tokens_per_s=r.get("tg_tps"),
            ppl=r.get("ppl"),
            ppl_err=r.get("ppl_err"),
            kld_mean=r.get("kld_mean"),
            top1_agreement=r.get("top1_agreement"),
            mean_abs_dlogit=r.get("mean_abs_dlogit"),
            is_baseline=bool(r.get("is_baseline")),
            ppl_half=r.get("ppl_ci")
            if r.get("ppl_ci") is not None
            else normal_half(r.get("ppl_err")),
        )
        for r in records
        if isinstance(r, dict)
    ]


def bnb_rows(records: list[Any]) -> list[Row]:
    return [
        Row(
            family=BNB,
            name=str(r.get("name", "?")),
            size_bytes=r.get("footprint_bytes"),
            bpw=r.get("bpw"),
            tokens_per_s=r.get("tokens_per_s"),
            ppl=r.get("ppl"),
            ppl_err=r.get("ppl_err"),
            kld_mean=r.get("kld_mean"),
            top1_agreement=r.get("top1_agreement"),
            mean_abs_dlogit=r.get("mean_abs_dlogit"),
            is_baseline=r.get("name") == "baseline",
            ppl_half=normal_half(r.get("ppl_err")),
        )
        for r in records
        if isinstance(r, dict) and r.get("status", "ok") == "ok"
    ]


def _comparability(gguf: dict[str, Any], bnb: dict[str, Any]) -> list[str]:
    notes = []
    sha_g, sha_b = gguf.get("corpus_sha256"), bnb.get("corpus_sha256")
    if sha_g and sha_b and sha_g != sha_b:
        notes.append(
            f"different corpora ({gguf.get('corpus')} vs {bnb.get('corpus')}): perplexities "
            "do not compare across the families"
        )
    elif sha_g and sha_b:
        n_g, n_b = gguf.get("corpus_tokens"), bnb.get("corpus_tokens")
        # one token apart is BOS, which llama.cpp always counts
        if isinstance(n_g, int) and isinstance(n_b, int) and abs(n_g - n_b) > 1:
            notes.append(
                f"the tokenizers differ: the corpus is {n_g} tokens for llama.cpp and {n_b} for "
                "transformers, so perplexities are per token of different vocabularies"
            )
    for key in ("ctx", "chunks"):
        if gguf.get(key) and bnb.get(key) and gguf[key] != bnb[key]:
            notes.append(f"{key} differs: {gguf[key]} for GGUF, {bnb[key]} for bnb")
    return notes


def compare(eval_file: str | Path, bnb_file: str | Path) -> Comparison:
    """Read both result files and put their rows side by side, with comparability notes."""
    eval_file, bnb_file = Path(eval_file), Path(bnb_file)
    gguf_head, gguf_records = _records(read_report(eval_file, "eval"), "models", eval_file, "eval")
    bnb_head, bnb_records = _records(read_report(bnb_file, "bnb"), "results", bnb_file, "bnb")
    result = Comparison(
        eval_file=str(eval_file), bnb_file=str(bnb_file), device=str(bnb_head.get("device", ""))
    )
    result.rows = gguf_rows(gguf_records) + bnb_rows(bnb_records)
    if not any(r.family == GGUF for r in result.rows):
        raise InputError(f"{eval_file} holds no GGUF results", path=eval_file)
    if not any(r.family == BNB for r in result.rows):
        raise InputError(f"{bnb_file} holds no bitsandbytes result that ran", path=bnb_file)
    result.notes = _comparability(gguf_head, bnb_head)
    base = (
        f"its {bnb_head['compute_dtype']} baseline"
        if bnb_head.get("compute_dtype")
        else "its baseline"
    )
    result.notes += [
        "Size: the GGUF file; for bnb the model's footprint in memory (weights, buffers and "
        "quantization constants).",
        "Tokens/s: llama-bench generation for GGUF; transformers generate() for bnb"
        + (f" on {result.device}" if result.device else "")
        + ".",
        f"KLD, top-1: each family against its own baseline (GGUF: the f16/bf16 file; bnb: {base}).",
        "± on PPL: the half-width of a 95 % interval, unpaired (GGUF: as its eval table says; "
        "bnb: 1.96 per-token standard errors, which treat tokens as independent and come out "
        "narrower). Lower is better for PPL and KLD, higher for top-1 and tokens/s.",
    ]
    return result


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return MISSING if value is None else f"{value:{spec}}{suffix}"


def comparison_table(comparison: Comparison) -> str:
    """The Markdown table, then the notes."""
    from ggufkit.evaluate.report import markdown_table

    header = [
        "Family",
        "Type",
        "Size",
        "BPW",
        "Tokens/s",
        "PPL",
        "KLD",
        "Top-1",
        "Δlogit (mean abs)",
    ]
    rows = [
        [
            r.family,
            r.name + (" (base)" if r.is_baseline else ""),
            MISSING if r.size_bytes is None else human_bytes(r.size_bytes),
            _fmt(r.bpw, ".2f"),
            _fmt(r.tokens_per_s, ".1f"),
            _fmt(r.ppl, ".4f") + (f" ± {r.ppl_half:.4f}" if r.ppl_half is not None else ""),
            _fmt(r.kld_mean, ".4f"),
            _fmt(None if r.top1_agreement is None else 100 * r.top1_agreement, ".1f", "%"),
            _fmt(r.mean_abs_dlogit, ".4f"),
        ]
        for r in comparison.rows
    ]
    lines = [markdown_table(header, rows, "llrrrrrrr")]
    if comparison.notes:
        lines += ["", *(f"- {note}" for note in comparison.notes)]
    return "\n".join(lines)


def plot_comparison(comparison: Comparison, out: str | Path) -> Path:
    """A PNG with four panels against size: perplexity, KL-divergence, and each family's speed
    on its own axis (llama-bench and transformers measure different things), with a title and a
    caption."""
    from ggufkit.evaluate.plots import label_offsets, new_figure, save_figure

    out, figure = new_figure(out, "compare.png", PLOT_SIZE_INCHES)
    sized = [r for r in comparison.rows if r.size_bytes]
    if not any(r.ppl is not None for r in sized):
        raise UsageError("nothing to plot: no perplexity in either file")
    axes = figure.subplots(1, 4)
    device = f" on {comparison.device}" if comparison.device else ""
    panels = (
        ("ppl", (GGUF, BNB), "perplexity", "Perplexity (lower is better)"),
        ("kld_mean", (GGUF, BNB), "mean KLD (nats/token)", "KLD vs own baseline (lower is better)"),
        ("tokens_per_s", (GGUF,), "generated tokens/s", "GGUF speed: llama-bench (CPU)"),
        ("tokens_per_s", (BNB,), "generated tokens/s", f"bnb speed: transformers{device}"),
    )
    mib = 1024 * 1024
    for ax, (attr, families, ylabel, title) in zip(axes, panels, strict=True):
        labelled: list[tuple[str, float, float]] = []
        for family in families:
            marker, color = MARKERS[family]
            points = [r for r in sized if r.family == family and getattr(r, attr) is not None]
            xs = [(r.size_bytes or 0) / mib for r in points]
            ys = [float(getattr(r, attr)) for r in points]
            ax.plot(xs, ys, marker, color=color, label=family, linestyle="none")
            labelled += zip([r.name for r in points], xs, ys, strict=True)
        for name, x, y, offset in label_offsets(labelled):
            ax.annotate(
                name, (x, y), textcoords="offset points", xytext=offset, fontsize=8, ha="center"
            )
        ax.set_xlabel("size (MiB)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.2, y=0.18)  # room for the labels at the edges
        if attr == "tokens_per_s" and labelled:
            ax.set_ylim(0, 1.25 * max(y for _, _, y in labelled))
        if len(families) > 1 and ax.has_data():
            ax.legend(fontsize=8)
    figure.suptitle("GGUF types (llama.cpp) beside bitsandbytes modes (transformers)", fontsize=12)
    caption = (
        "Size: the GGUF file, and for bnb the model's footprint in memory. KLD: each family "
        "against its own baseline. Speeds come from different engines and are not comparable "
        "across the two right-hand panels; higher is better."
    )
    return save_figure(figure, out, caption)
