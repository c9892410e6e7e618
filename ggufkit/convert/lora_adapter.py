"""A PEFT LoRA adapter -> llama.cpp's LoRA GGUF, through the pinned ``convert_lora_to_gguf.py``.

The adapter is checked against its base first with the merge's own checks
(``ggufkit.delta.lora_source.LoraSource``: settings, names, shapes, architecture), so an adapter
for another base fails before anything is written. Then ggufkit answers where the pinned script
is silently wrong or where llama.cpp would fail later:

- llama.cpp scales every tensor by ``alpha / rank`` with one alpha per file; upstream writes
  ``lora_alpha`` as it is. For rsLoRA (PEFT: ``alpha / sqrt(r)``) ggufkit writes ``alpha *
  sqrt(r)``, and modules whose scale still differs (``alpha_pattern``, rsLoRA with a
  ``rank_pattern``) get the ratio folded into their lora_B as the child loads it;
- whole tensors (``modules_to_save``, a resized embedding) cannot be a llama.cpp adapter: refused,
  with a hint to merge instead;
- a LoRA on an lm_head the base ties to its embeddings converts upstream, but llama.cpp refuses
  the adapter at load time (and llama-cpp-python 0.3.36 then crashes): refused here.
The output records ggufkit's provenance keys: the base's and the adapter's files and sha256s.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.convert.upstream import _check_torch, _source, written_arch_and_count
from ggufkit.core.errors import AdapterError, ToolFailedError, UsageError
from ggufkit.core.fsutil import atomic_output, check_output_path
from ggufkit.core.log import get_logger
from ggufkit.llamacpp.runner import run_tool

log = get_logger("convert.lora")

SCRIPT = "convert_lora_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_MERGE_HINT = (
    "merge it into the base instead: `ggufkit merge-lora` or `ggufkit convert BASE --lora`"
)


@dataclass
class AdapterResult:
    output: Path
    gguf_arch: str
    outtype: str
    n_tensors: int
    n_bytes: int
    alpha: float  # the adapter.lora.alpha written
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        return data


@dataclass(frozen=True)
class AdapterPlan:
    """What the child is told: the alpha to write and the lora_B factors folded in."""

    alpha: float
    b_factors: dict[str, float]
    notes: list[str]


def default_adapter_name(adapter_dir: Path, outtype: str) -> str:
    return f"{adapter_dir.name}-{outtype.upper()}-LoRA.gguf"


def convert_lora_adapter(
    adapter: str | Path,
    base: str | Path,
    output: str | Path | None = None,
    *,
    outtype: str = "f16",
    force: bool = False,
) -> AdapterResult:
    """Write llama.cpp's LoRA GGUF for ``adapter`` (a PEFT directory) made on ``base``."""
    from ggufkit.delta.merge import resolve_dir

    started = time.perf_counter()
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(
            f"unknown output type {outtype!r}", hint=f"choose one of {', '.join(OUTTYPES)}"
        )
    adapter_dir, base_dir = Path(adapter), resolve_dir(base)
    out = (
        Path(output)
        if output is not None
        else Path.cwd() / default_adapter_name(adapter_dir, outtype)
    )
    check_output_path(out, inputs=(adapter_dir, base_dir))
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="pass --force to overwrite it, or choose -o")
    plan = plan_adapter(base_dir, adapter_dir)
    _check_torch()
    source = _source()
    from ggufkit.formats.origin import SourceInfo, SourceOrigin

    origin = SourceOrigin.of(SourceInfo(model_dir=base_dir, lora=adapter_dir))
    try:
        kv: dict[str, Any] = {"ggufkit.engine": "upstream", "ggufkit.source.lora": adapter_dir.name}
        kv |= {"ggufkit.source.files": origin.labels, "ggufkit.source.sha256": origin.result()}
    finally:
        origin.cancel()
    from ggufkit import __version__

    kv["ggufkit.version"] = __version__
    with tempfile.TemporaryDirectory(prefix="ggufkit-lora-") as tmp:
        copy = _adapter_copy(adapter_dir, Path(tmp) / "adapter", plan.alpha)
        settings = {"source": str(source), "b_factors": plan.b_factors, "kv": kv}
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        with atomic_output(out) as partial:
            args = [
                sys.executable,
                str(Path(__file__).with_name("_lora_child.py")),
                str(settings_file),
                str(copy),
                "--base",
                str(base_dir),
                "--outfile",
                str(partial),
                "--outtype",
                outtype,
            ]
            try:
                run_tool(
                    args,
                    what=f"the upstream converter ({SCRIPT})",
                    env={"PYTHONPATH": str(source / "gguf-py")},
                    merge_stderr=True,
                    hint="see the log; the architecture may need a newer llama.cpp",
                )
            except ToolFailedError:
                partial.unlink(missing_ok=True)
                raise
            gguf_arch, n_tensors = written_arch_and_count(partial)
    notes = ["converted by the pinned upstream convert_lora_to_gguf.py", *plan.notes]
    return AdapterResult(
        output=out,
        gguf_arch=gguf_arch,
        outtype=outtype,
        n_tensors=n_tensors,
        n_bytes=out.stat().st_size,
        alpha=plan.alpha,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def plan_adapter(base_dir: Path, adapter_dir: Path) -> AdapterPlan:
    """Check the adapter against its base and work out ggufkit's answers (see the module doc)."""
    from ggufkit.delta.lora_source import LoraSource

    with LoraSource(base_dir, adapter_dir) as source:
        adapter = source.adapter
        saved = [n for n, t in adapter.saved.items() if ".base_layer." not in t]
        if saved or source.extended:
            what = ", ".join(saved or sorted(source.extended))
            raise AdapterError(
                f"the adapter {adapter_dir} saves whole tensors ({what}: modules_to_save or a "
                "resized vocabulary), which a llama.cpp LoRA file cannot carry",
                hint=_MERGE_HINT,
                path=adapter_dir,
            )
        folded = [p.target for where, p in source.pairs.items() if where != p.target]
        if folded:
            raise AdapterError(
                f"the adapter {adapter_dir} has a LoRA on {folded[0]}, which the base ties to its "
                "input embeddings: llama.cpp refuses such an adapter when it loads it",
                hint=_MERGE_HINT + " (PEFT's merge_and_unload merges it into the shared matrix)",
                path=adapter_dir,
            )
        if adapter.config.get("fan_in_fan_out"):
            raise AdapterError(
                f"the adapter {adapter_dir} has fan_in_fan_out (Conv1D weights), which ggufkit "
                "has not proven through llama.cpp's adapter path",
                hint=_MERGE_HINT,
                path=adapter_dir,
            )
        root = math.sqrt(adapter.rank) if adapter.rslora else 1.0
        alpha = adapter.alpha * root  # llama.cpp: alpha / r = PEFT's scale at the global rank
        factors: dict[str, float] = {}
        for pair in source.pairs.values():
            written = alpha / pair.rank
            if not math.isclose(pair.scale, written, rel_tol=1e-7):
                factors[pair.b] = pair.scale / written
    notes = []
    if adapter.rslora:
        notes.append(f"rsLoRA: wrote alpha {alpha:g} (= lora_alpha * sqrt(r)), PEFT's scale")
    if factors:
        notes.append(
            f"{len(factors)} module(s) with their own scale (alpha_pattern or rank_pattern): "
            "the ratio folded into their lora_B"
        )
    for note in notes:
        log.info("%s", note)
    return AdapterPlan(alpha, factors, notes)


def _adapter_copy(adapter_dir: Path, copy: Path, alpha: float) -> Path:
    """The adapter as upstream must read it: the config with the alpha to write (patterns and
    rsLoRA answered), no local base path to append to a Hub URL, and the weights linked."""
    from ggufkit.core.fsutil import read_json
    from ggufkit.delta.lora import CONFIG, WEIGHTS

    copy.mkdir(parents=True)
    config = dict(read_json(adapter_dir / CONFIG, AdapterError))
    config.update(lora_alpha=alpha, use_rslora=False, alpha_pattern={})
    base_name = config.get("base_model_name_or_path")
    if isinstance(base_name, str) and Path(base_name).exists():
        config["base_model_name_or_path"] = None
    (copy / CONFIG).write_text(json.dumps(config), encoding="utf-8")
    for name in WEIGHTS:
        if (adapter_dir / name).is_file():
            (copy / name).symlink_to((adapter_dir / name).resolve())
            break
    return copy
