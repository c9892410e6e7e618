"""Vision-language checkpoints: the language model GGUF and its ``mmproj`` GGUF, converted together.

The pinned ``convert_hf_to_gguf.py`` registers a vision-language class twice: once as a text
model, once as an ``MmprojModel`` (the vision tower and projector, written with ``--mmproj``).
``convert_vision`` runs the upstream engine for each, with ggufkit's answers (per-architecture
flags such as MiniCPM-V 4.6's ``--no-mtp``, the derived pre-tokenizer, the chat template), and
records in each file which file is its pair (``ggufkit.vision.*``). The projector is named as
llama.cpp's releases name it: ``mmproj-<model>-<TYPE>.gguf`` (``mmproj_path``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.convert.chat_templates import ChatTemplateChoice
from ggufkit.convert.result import EXISTS_HINT, EngineResult
from ggufkit.core.errors import UsageError
from ggufkit.core.fsutil import atomic_output, check_free_disk
from ggufkit.core.log import get_logger

if TYPE_CHECKING:
    from ggufkit.formats.origin import SourceInfo

log = get_logger("convert.vision")

MMPROJ_PREFIX = "mmproj-"
ROLE_KEY = "ggufkit.vision.role"  # "model" or "mmproj"
PAIR_KEY = "ggufkit.vision.pair"  # the other file's name
# Extra converter flags for the language model, with the reason (shown as a note).
TEXT_MODEL_ARGS: dict[str, tuple[tuple[str, ...], str]] = {
    "MiniCPMV4_6ForConditionalGeneration": (
        ("--no-mtp",),
        "--no-mtp: MiniCPM-V 4.6's multi-token-prediction layers are not used by llama.cpp",
    ),
}
_REGISTERED_CLASS = re.compile(
    r"@ModelBase\.register\(([^)]*)\)\s*(?:[@#][^\n]*\n\s*)*class\s+(\w+)\(([\w.]+)", re.S
)
_CLASS = re.compile(r"^class\s+(\w+)\(([\w.]+)", re.M)


@functools.cache
def mmproj_architectures() -> frozenset[str]:
    """HF classes the pinned converter can write an mmproj for (a registered ``MmprojModel``)."""
    from ggufkit.convert.upstream import _source

    source = _source()
    texts = []
    for file in sorted((source / "conversion").glob("*.py")):
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except OSError:
            continue
    parents = {name: base.split(".")[-1] for text in texts for name, base in _CLASS.findall(text)}

    def is_mmproj(cls: str) -> bool:
        seen: set[str] = set()
        while cls != "MmprojModel" and cls in parents and cls not in seen:
            seen.add(cls)
            cls = parents[cls]
        return cls == "MmprojModel"

    names: set[str] = set()
    for text in texts:
        for registered, cls, _base in _REGISTERED_CLASS.findall(text):
            if is_mmproj(cls):
                names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", registered))
    return frozenset(names)


def is_vision_checkpoint(config: dict[str, Any], hf_arch: str) -> bool:
    """A vision-language checkpoint whose projector the pinned converter writes."""
    if not isinstance(config.get("vision_config"), dict):
        return False
    try:
        return hf_arch in mmproj_architectures()
    except Exception as exc:  # no source: not a known vision checkpoint
        log.debug("cannot read the upstream converter's registry: %s", exc)
        return False


def mmproj_path(model_file: Path, mmproj_outtype: str = "f16") -> Path:
    """``mmproj-<model>-<TYPE>.gguf`` beside the model (llama.cpp's releases name the pair so):
    a model named ``<model>-<OUTTYPE>.gguf`` gives its name with the projector's own type
    (``X-F16.gguf`` -> ``mmproj-X-F16.gguf``; with a q8_0 projector ``mmproj-X-Q8_0.gguf``), any
    other name ``mmproj-<model file>``."""
    from ggufkit.convert.result import OUTTYPE_NAMES

    stem = model_file.name.removesuffix(".gguf")
    for outtype in OUTTYPE_NAMES:
        if stem.upper().endswith(f"-{outtype.upper()}") and model_file.name.endswith(".gguf"):
            base = stem[: -len(outtype) - 1]
            return model_file.with_name(f"{MMPROJ_PREFIX}{base}-{mmproj_outtype.upper()}.gguf")
    return model_file.with_name(MMPROJ_PREFIX + model_file.name)


def _pair_keys(role: str, pair: Path) -> dict[str, str]:
    return {ROLE_KEY: role, PAIR_KEY: pair.name}


def converted_together(model_pair: str, mmproj_pair: str) -> bool:
    """Whether a model whose header names ``model_pair`` as its projector and a projector whose
    header names ``mmproj_pair`` as its model were converted together (whatever their names
    are now)."""
    from ggufkit.convert.result import OUTTYPE_NAMES

    return any(mmproj_path(Path(mmproj_pair), t).name == model_pair for t in OUTTYPE_NAMES)


def check_outputs(out: Path, *, force: bool, mmproj_outtype: str = "f16") -> Path:
    """The projector's path for ``out``; refuses to overwrite it without ``force``."""
    mmproj = mmproj_path(out, mmproj_outtype)
    if mmproj.exists() and not force:
        raise UsageError(f"{mmproj} already exists", hint=EXISTS_HINT)
    return mmproj


def convert_vision(
    info: SourceInfo,
    out: Path,
    outtype: str,
    chat: ChatTemplateChoice,
    *,
    hf_arch: str,
    mmproj_outtype: str = "f16",
    phases: dict[str, float] | None = None,
) -> tuple[EngineResult, Path]:
    """Write the language model to ``out`` and the projector beside it (both atomically).

    Returns what was written of the language model, and the projector's path.
    """
    from ggufkit.convert.upstream import run_upstream, written_arch_and_count
    from ggufkit.convert.upstream_source import upstream_source
    from ggufkit.formats.safetensors import Checkpoint

    mmproj = mmproj_path(out, mmproj_outtype)
    model_dir = info.model_dir
    with Checkpoint.open(model_dir) as checkpoint:
        source_bytes = sum(i.n_bytes for i in checkpoint.infos())
    check_free_disk(out, source_bytes)
    text_args, why = TEXT_MODEL_ARGS.get(hf_arch, ((), ""))
    notes = ["converted by the pinned upstream convert_hf_to_gguf.py (language model + mmproj)"]
    if why:
        notes.append(why)
    text_phases: dict[str, float] = {}
    mmproj_phases: dict[str, float] = {}
    with upstream_source(info, out) as source:
        with atomic_output(out) as partial:
            notes += run_upstream(
                model_dir, partial, outtype=outtype, expected_bytes=source_bytes, chat=chat,
                phases=text_phases, extra_args=text_args,
                extra_kv=source.kv | _pair_keys("model", mmproj),
            )  # fmt: skip
            gguf_arch, n_tensors = written_arch_and_count(partial)
            source.finish(partial)
        with atomic_output(mmproj) as partial:
            notes += run_upstream(
                model_dir, partial, outtype=mmproj_outtype, expected_bytes=0, chat=None,
                phases=mmproj_phases, extra_args=("--mmproj",),
                extra_kv=source.kv | _pair_keys("mmproj", out),
            )  # fmt: skip
            _, mmproj_tensors = written_arch_and_count(partial)
            source.finish(partial)
    if phases is not None:
        phases["upstream"] = text_phases.get("upstream", 0.0)
        phases["upstream_mmproj"] = mmproj_phases.get("upstream", 0.0)
    notes.append(f"projector: {mmproj.name} ({mmproj_tensors} tensors, {mmproj_outtype})")
    return EngineResult(n_tensors, out.stat().st_size, source_bytes, gguf_arch, notes), mmproj


def pair_of(file: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The other file of a vision pair as ``inspect`` shows it, or None for a lone file."""
    pair, role = metadata.get(PAIR_KEY), metadata.get(ROLE_KEY)
    if not isinstance(pair, str) or role not in ("model", "mmproj"):
        return None
    path = file.parent / Path(pair).name
    other = "mmproj" if role == "model" else "model"
    return {"role": role, "pair": str(path), "pair_role": other, "present": path.is_file()}
