"""The card's "Which file to pick", derived from the measured table only: the files that are
worth their size (none smaller is as close to the f16 file), each with its measured loss, and
the one to start with. Nothing here is a rule of thumb: a file that was not measured is not
ranked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufkit.core.fsutil import human_bytes
from ggufkit.evaluate.results import normal_half

ACCEPTABLE_LOSS = 0.01  # a ΔPPL within 1 % of the f16 file's perplexity counts as "no real loss"


@dataclass
class Artefact:
    """One published model file (the first shard stands for a split set)."""

    path: Path
    type: str
    record: dict[str, Any]

    @property
    def eval(self) -> dict[str, Any]:
        value = self.record.get("eval") or {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Measured:
    """One quantized file's numbers from its eval record."""

    artefact: Artefact
    size: int
    kld: float
    kld_half: float | None
    delta: float | None
    delta_half: float | None

    @property
    def name(self) -> str:
        return self.artefact.path.name

    def no_measurable_loss(self) -> bool:
        """The ΔPPL 95 % interval covers 0."""
        if self.delta is None or self.delta_half is None:
            return False
        return abs(self.delta) <= self.delta_half


def _half(e: dict[str, Any], ci: str, err: str) -> float | None:
    value = e.get(ci)
    if isinstance(value, (int, float)):
        return float(value)
    err_value = e.get(err)
    return normal_half(float(err_value)) if isinstance(err_value, (int, float)) else None


def measured(artefacts: list[Artefact]) -> list[Measured]:
    """The quantized files with a KL-divergence, smallest first."""
    found = []
    for a in artefacts:
        e = a.eval
        if a.record.get("step") != "quantize" or not isinstance(e.get("kld_mean"), (int, float)):
            continue
        delta = e.get("delta_ppl")
        found.append(
            Measured(
                a,
                int(a.record.get("size") or 0),
                float(e["kld_mean"]),
                _half(e, "kld_ci", "kld_err"),
                float(delta) if isinstance(delta, (int, float)) else None,
                _half(e, "delta_ppl_ci", "delta_ppl_err"),
            )
        )
    return sorted(found, key=lambda m: m.size)


def worth_their_size(
    files: list[Measured],
) -> tuple[list[Measured], list[tuple[Measured, Measured]]]:
    """(files no smaller file beats on KLD, [(dominated, the smaller-or-equal file at least as
    close to f16)])."""
    front: list[Measured] = []
    dominated = []
    for m in files:
        better = next((f for f in front if f.kld <= m.kld), None)
        if better is None:
            front.append(m)
        else:
            dominated.append((m, better))
    return front, dominated


def recommended(artefacts: list[Artefact]) -> Artefact | None:
    """The file to start with: the smallest measured one with no measurable loss (its ΔPPL
    interval covers 0) or a loss under 1 % of the f16 file's perplexity; else the closest to
    f16. None when nothing was measured."""
    files = measured(artefacts)
    if not files:
        return None
    front, _ = worth_their_size(files)
    base_ppl = _base_ppl(artefacts)
    for m in front:
        if _acceptable(m, base_ppl):
            return m.artefact
    return min(files, key=lambda m: m.kld).artefact


def _base_ppl(artefacts: list[Artefact]) -> float | None:
    for a in artefacts:
        if a.eval.get("is_baseline") and isinstance(a.eval.get("ppl"), (int, float)):
            return float(a.eval["ppl"])
    return None


def _loss_text(m: Measured, base_ppl: float | None) -> str:
    spec = ".5f" if m.kld >= 1e-3 else ".2e"
    kld = f"KLD {m.kld:{spec}}" + (f" ± {m.kld_half:{spec}}" if m.kld_half is not None else "")
    if m.delta is None:
        return kld
    delta = f"ΔPPL {m.delta:+.4f}" + (f" ± {m.delta_half:.4f}" if m.delta_half is not None else "")
    if m.no_measurable_loss():
        verdict = "no measurable perplexity loss"
    elif base_ppl:
        verdict = f"perplexity {100 * m.delta / base_ppl:+.2f} % of f16's"
    else:
        verdict = ""
    return f"{kld}, {delta}" + (f" ({verdict})" if verdict else "")


def pick_section(artefacts: list[Artefact]) -> str:
    """The section's Markdown; empty when no quantized file was measured against f16."""
    files = measured(artefacts)
    if not files:
        return ""
    base = next((a for a in artefacts if a.record.get("step") == "convert"), None)
    base_size = int(base.record.get("size") or 0) if base is not None else 0
    base_ppl = _base_ppl(artefacts)
    front, dominated = worth_their_size(files)
    corpus = Path(str(files[0].artefact.eval.get("corpus", "the corpus"))).name
    lines = [
        "## Which file to pick",
        f"From the table above (KLD: how far a file's predictions are from the f16 file's, on "
        f"`{corpus}`; ± a 95 % interval). Smaller files lose more; each of these is the "
        "smallest at its closeness to f16:",
        "",
    ]
    for m in front:
        share = f", {100 * m.size / base_size:.0f} % of f16" if base_size else ""
        lines.append(
            f"- `{m.name}` ({m.artefact.type}, {human_bytes(m.size)}{share}): "
            f"{_loss_text(m, base_ppl)}"
        )
    for m, better in dominated:
        lines.append(
            f"- Not worth its size here: `{m.name}` ({human_bytes(m.size)}) is no closer to f16 "
            f"than `{better.name}` ({human_bytes(better.size)})."
        )
    pick = recommended(artefacts)
    if pick is not None:
        lines += [
            "",
            f"Start with **`{pick.path.name}`**: the smallest measured file whose perplexity "
            "is within 1 % of f16's or not measurably different"
            if any(pick is m.artefact for m in front if _acceptable(m, base_ppl))
            else f"Start with **`{pick.path.name}`**: the closest to f16 measured "
            "(every smaller file loses more than 1 % perplexity)",
        ]
        lines[-1] += (
            "; go smaller only if it does not fit your memory. The numbers are for this "
            "corpus: on other text the losses can differ."
        )
    return "\n".join(lines)


def _acceptable(m: Measured, base_ppl: float | None) -> bool:
    small = m.delta is not None and bool(base_ppl) and m.delta / (base_ppl or 1) <= ACCEPTABLE_LOSS
    return m.no_measurable_loss() or small
