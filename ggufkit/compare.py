"""``ggufkit compare``: GGUF types (``ggufkit eval --json``) and bitsandbytes modes
(``ggufkit bnb --json``) in one table and one plot: size, speed, perplexity, KL-divergence.

The two families are measured by different engines, so the table says what each column means for
each family, and notes where the numbers do not compare: different corpora or contexts, or
tokenizers that cut the same corpus into a different number of tokens.

:func:`image_gguf_row` is the GGUF pair's row of ``bnb --image``'s table: the same question about
the same picture through llama.cpp's ``llama-mtmd-cli``, beside the bitsandbytes rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.bnb.image_results import GGUF as GGUF_ROW
from ggufkit.bnb.image_results import ImageReport, ImageRow
from ggufkit.bnb.measure import ChildPeakRss
from ggufkit.bnb.results import BASELINE, BnbReport, ModeResult
from ggufkit.core.errors import GGUFKitError, InputError, ToolMissingError, UsageError
from ggufkit.core.fsutil import human_bytes, read_json
from ggufkit.core.text import markdown_table
from ggufkit.evaluate.plots import label_offsets, new_figure, save_figure
from ggufkit.evaluate.results import EvalReport, ModelResult, normal_half

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


# What a report read as a bare list of per-model records (no header) says about its run.
_EVAL_HEAD: dict[str, Any] = {
    "corpus": "", "corpus_sha256": "", "corpus_tokens": None, "ctx": 0, "chunks": 0,
    "baseline": None, "llama_cpp_commit": "",
}  # fmt: skip
_BNB_HEAD: dict[str, Any] = {
    "model": "", "device": "", "device_name": "", "compute_dtype": "", "corpus": None,
    "corpus_sha256": None, "corpus_tokens": None, "ctx": None, "chunks": None, "prompts": [],
    "runs": 0, "max_new_tokens": 0, "seed": 0,
}  # fmt: skip


def _typed(path: Path, what: str, key: str, head: dict[str, Any]) -> dict[str, Any]:
    """The report at ``path`` as ``from_json`` reads it: a bare list of records gets an empty
    header, and anything without a ``key`` list is refused."""
    data = read_report(path, what)
    if isinstance(data, list):
        data = {key: data}
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return {**head, **data}
    raise InputError(
        f"{path} is not the output of `ggufkit {what} --json` (no {key!r} list)",
        hint=f"write it with `ggufkit {what} ... --json > {path.name}`",
        path=path,
    )


def read_eval_report(path: str | Path) -> EvalReport:
    """``ggufkit eval --json``'s report (or its ``models`` list alone) at ``path``."""
    path = Path(path)
    data = _typed(path, "eval", "models", _EVAL_HEAD)
    try:
        return EvalReport.from_json(data)
    except (TypeError, AttributeError) as exc:  # a record that is no model's result
        raise InputError(f"{path} holds a malformed eval result: {exc}", path=path) from exc


def read_bnb_report(path: str | Path) -> BnbReport:
    """``ggufkit bnb --json``'s report (or its ``results`` list alone) at ``path``."""
    path = Path(path)
    data = _typed(path, "bnb", "results", _BNB_HEAD)
    try:
        return BnbReport.from_json(data)
    except (TypeError, AttributeError) as exc:
        raise InputError(f"{path} holds a malformed bnb result: {exc}", path=path) from exc


def gguf_rows(models: list[ModelResult]) -> list[Row]:
    return [
        Row(
            family=GGUF,
            name=m.name or m.type or Path(m.path).stem,
            size_bytes=m.size_bytes,
            bpw=m.bpw,
            tokens_per_s=m.tg_tps,
            ppl=m.ppl,
            ppl_err=m.ppl_err,
            kld_mean=m.kld_mean,
            top1_agreement=m.top1_agreement,
            is_baseline=m.is_baseline,
            ppl_half=m.ppl_half,
        )
        for m in models
    ]


def bnb_rows(results: list[ModeResult]) -> list[Row]:
    return [
        Row(
            family=BNB,
            name=r.name,
            size_bytes=r.footprint_bytes,
            bpw=r.bpw,
            tokens_per_s=r.tokens_per_s,
            ppl=r.ppl,
            ppl_err=r.ppl_err,
            kld_mean=r.kld_mean,
            top1_agreement=r.top1_agreement,
            mean_abs_dlogit=r.mean_abs_dlogit,
            is_baseline=r.name == BASELINE,
            ppl_half=normal_half(r.ppl_err),
        )
        for r in results
        if r.ok
    ]


def _comparability(gguf: EvalReport, bnb: BnbReport) -> list[str]:
    notes = []
    sha_g, sha_b = gguf.corpus_sha256, bnb.corpus_sha256
    if sha_g and sha_b and sha_g != sha_b:
        notes.append(
            f"different corpora ({gguf.corpus} vs {bnb.corpus}): perplexities "
            "do not compare across the families"
        )
    elif sha_g and sha_b:
        n_g, n_b = gguf.corpus_tokens, bnb.corpus_tokens
        # one token apart is BOS, which llama.cpp always counts
        if isinstance(n_g, int) and isinstance(n_b, int) and abs(n_g - n_b) > 1:
            notes.append(
                f"the tokenizers differ: the corpus is {n_g} tokens for llama.cpp and {n_b} for "
                "transformers, so perplexities are per token of different vocabularies"
            )
    for key, ours, theirs in (("ctx", gguf.ctx, bnb.ctx), ("chunks", gguf.chunks, bnb.chunks)):
        if ours and theirs and ours != theirs:
            notes.append(f"{key} differs: {ours} for GGUF, {theirs} for bnb")
    return notes


def compare(eval_file: str | Path, bnb_file: str | Path) -> Comparison:
    """Read both result files and put their rows side by side, with comparability notes."""
    eval_file, bnb_file = Path(eval_file), Path(bnb_file)
    return compare_reports(
        read_eval_report(eval_file), read_bnb_report(bnb_file), eval_file, bnb_file
    )


def compare_reports(
    gguf: EvalReport, bnb: BnbReport, eval_file: str | Path, bnb_file: str | Path
) -> Comparison:
    """The rows of both reports side by side, with comparability notes; the files are named in
    the result and in errors."""
    result = Comparison(eval_file=str(eval_file), bnb_file=str(bnb_file), device=bnb.device)
    result.rows = gguf_rows(gguf.models) + bnb_rows(bnb.results)
    if not any(r.family == GGUF for r in result.rows):
        raise InputError(f"{eval_file} holds no GGUF results", path=Path(eval_file))
    if not any(r.family == BNB for r in result.rows):
        raise InputError(f"{bnb_file} holds no bitsandbytes result that ran", path=Path(bnb_file))
    result.notes = _comparability(gguf, bnb)
    base = f"its {bnb.compute_dtype} baseline" if bnb.compute_dtype else "its baseline"
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


# --- one question about a picture: the GGUF pair beside bitsandbytes (``bnb --image``) ----------


def image_gguf_row(
    model: Path,
    mmproj: Path | None,
    report: ImageReport,
    *,
    tokenizer_dir: Path | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> ImageRow:
    """The GGUF pair's row of ``report``'s table: its question about its picture through
    ``llama-mtmd-cli``, ``report.runs`` times, greedy. Tokens are the answer re-tokenized with
    ``tokenizer_dir``'s tokenizer (llama-mtmd-cli reports no count); memory is the tool's peak RSS.
    A failure of the tool is the row's (status "failed"), so the rows measured before still show.
    """
    from ggufkit.inference.image_chat import check_pair, image_chat

    mmproj = check_pair(model, mmproj)
    row = ImageRow(name=GGUF_ROW, kind="llama.cpp", description="GGUF + mmproj, llama-mtmd-cli")
    row.files = [str(model), str(mmproj)]
    row.size_bytes = model.stat().st_size + mmproj.stat().st_size
    seconds, answers = 0.0, []
    try:
        with ChildPeakRss("llama-mtmd-cli") as memory:
            for _ in range(report.runs):
                result = image_chat(
                    model, report.question, Path(report.image), mmproj=mmproj,
                    max_tokens=report.max_new_tokens, temperature=0.0, seed=report.seed,
                    threads=threads,
                )  # fmt: skip
                seconds += result.seconds
                answers.append(result.answer)
    except ToolMissingError:
        raise  # no llama.cpp at all: the callers decide (the demo skips the row)
    except GGUFKitError as exc:
        row.status, row.reason = "failed", str(exc)
        return row
    row.answer, row.gen_s, row.runs = answers[0], seconds, report.runs
    row.notes.append(
        "each run starts llama-mtmd-cli: its time includes loading the model and the projector"
    )
    row.peak_rss_bytes = memory.peak
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_dir, trust_remote_code=trust_remote_code
        )
        counts = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
        row.tokens = sum(min(n, report.max_new_tokens) for n in counts)
        row.tokens_per_s = row.tokens / seconds if seconds > 0 else None
        row.notes.append("tokens: the answers re-tokenized (llama-mtmd-cli reports no count)")
    return row
