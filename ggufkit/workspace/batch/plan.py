"""``batch.toml``: the models, the types, and the optional imatrix, eval and publish steps.

Example::

    outdir = "out"                # one folder per model under it; every Ray node must reach it
    types = ["q4_0", "q8_0", "q4_k_m"]

    [[models]]
    source = "owner/model"        # a Hub id, or a directory relative to this file
    name = "model"                # optional: the file names (default: the source's last part)
    delta_base = "owner/base"     # optional: `source` is a delta added to this base
    lora = "my-lora"              # optional: a PEFT LoRA adapter directory merged into `source`
    chat_template = "vicuna_v1.1" # optional: as `ggufkit convert --chat-template`, a file
                                  # relative to this file
    engine = "upstream"           # optional: auto (default), native or upstream

    [imatrix]                     # optional: an importance matrix used by every quantize
    corpus = "calibration.txt"    # default: the embedded calibration text
    ctx = 512
    chunks = 100

    [eval]                        # optional: perplexity and KL-divergence of every file
    corpus = "heldout.txt"
    ctx = 512
    chunks = 20

    [publish]                     # optional: upload each model's files
    repo = "me/{name}-GGUF"

Files the plan names (chat templates, corpora) and `outdir` stay inside the plan's folder:
relative paths, taken from it, without "..". A plan cannot read the token in your home or
write outside its folder. Model sources may be any directory or Hub id.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import WorkspaceError
from ggufkit.core.fsutil import read_toml, stays_inside
from ggufkit.hub import looks_like_repo_id
from ggufkit.workspace.config import ENGINES, default_name, parse_types

_MODEL_KEYS = ("source", "name", "delta_base", "lora", "chat_template", "revision", "engine")


@dataclass(frozen=True)
class ModelSpec:
    source: str  # an absolute directory, or a Hub id
    name: str
    delta_base: str | None = None
    lora: str | None = None  # an absolute adapter directory
    chat_template: str | None = None
    revision: str | None = None
    engine: str | None = None  # None: auto

    @property
    def from_hub(self) -> bool:
        return not Path(self.source).is_absolute()


@dataclass(frozen=True)
class StepSettings:
    """The imatrix or eval step: off when ``enabled`` is False."""

    enabled: bool = False
    corpus: Path | None = None  # None: the embedded default
    ctx: int = 512
    chunks: int | None = None


@dataclass(frozen=True)
class PublishTarget:
    repo: str  # "{name}" becomes the model's name
    private: bool = False

    def repo_for(self, name: str) -> str:
        return self.repo.replace("{name}", name)


@dataclass
class BatchPlan:
    path: Path
    outdir: Path
    models: list[ModelSpec]
    types: list[str]
    outtype: str = "f16"
    imatrix: StepSettings = field(default_factory=StepSettings)
    eval: StepSettings = field(default_factory=StepSettings)
    publish: PublishTarget | None = None

    def model_dir(self, model: ModelSpec) -> Path:
        return self.outdir / model.name


def load_plan(path: str | Path) -> BatchPlan:
    """Read and check a plan file; relative paths are taken from the file's folder."""
    path = Path(path).absolute()
    try:
        data = read_toml(path, WorkspaceError)  # refuses fifos, huge and too deeply nested files
    except FileNotFoundError as exc:
        raise WorkspaceError(f"no plan file {path}", hint="give the path of a batch.toml") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkspaceError(f"{path}: not valid TOML ({exc})", hint="fix the file") from exc
    return parse_plan(data, path)


def parse_plan(data: dict[str, Any], path: Path) -> BatchPlan:
    def invalid(message: str, hint: str = "see `ggufkit batch --help` for the format") -> Exception:
        return WorkspaceError(f"{path}: {message}", hint=hint, path=path)

    known = ("outdir", "types", "outtype", "models", "imatrix", "eval", "publish")
    for key in data:
        if key not in known:
            raise invalid(f"unknown setting {key!r}", f"known settings: {', '.join(known)}")
    here = path.parent
    types = data.get("types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise invalid("`types` must be a non-empty list of strings", 'e.g. types = ["q4_0"]')
    models = [_model(entry, here, invalid) for entry in _table_list(data, "models", invalid)]
    if not models:
        raise invalid("no [[models]]", 'add one: [[models]] source = "owner/name"')
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise invalid("two models share a name", "give each [[models]] its own `name`")
    publish = data.get("publish")
    if publish is not None:
        if not isinstance(publish, dict) or not isinstance(publish.get("repo"), str):
            raise invalid("[publish] needs `repo`", 'e.g. repo = "me/{name}-GGUF"')
        if not looks_like_repo_id(publish["repo"].replace("{name}", "x")):
            raise invalid(f"[publish] repo {publish['repo']!r} is not owner/name")
        publish = PublishTarget(publish["repo"], bool(publish.get("private", False)))
    return BatchPlan(
        path=path,
        outdir=inside(str(data.get("outdir", "out")), here, "outdir", invalid),
        models=models,
        types=parse_types(",".join(types)),
        outtype=str(data.get("outtype", "f16")).lower(),
        imatrix=_settings(data, "imatrix", here, invalid),
        eval=_settings(data, "eval", here, invalid),
        publish=publish,
    )


def _table_list(data: dict[str, Any], key: str, invalid: Any) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise invalid(f"`{key}` must be a list of tables ([[{key}]])")
    return value


def _model(entry: dict[str, Any], here: Path, invalid: Any) -> ModelSpec:
    for key, value in entry.items():
        if key not in _MODEL_KEYS:
            raise invalid(f"[[models]]: unknown key {key!r}", f"known: {', '.join(_MODEL_KEYS)}")
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"[[models]] {key} must be a non-empty string")
    if "source" not in entry:
        raise invalid("a [[models]] entry has no `source`")

    def where(ref: str) -> str:
        local = here / ref
        if local.is_dir():
            return str(local.absolute())
        if looks_like_repo_id(ref):
            return ref
        raise invalid(f"{ref}: no such directory, and not a Hub id", "fix the model's path")

    source = where(entry["source"])
    name = entry.get("name") or default_name(entry["source"])
    if default_name(name) != name:
        raise invalid(f"model name {name!r} is not a plain file name", "use letters, digits, . _ -")
    base, lora = entry.get("delta_base"), entry.get("lora")
    if lora is not None and not (isinstance(lora, str) and (here / lora).is_dir()):
        raise invalid(f"[[models]] lora {lora!r} is not a directory", "give the adapter's folder")
    engine = entry.get("engine")
    if engine is not None and engine not in ENGINES:
        raise invalid(f"[[models]] engine {engine!r} is unknown", f"choose {', '.join(ENGINES)}")
    return ModelSpec(
        source=source,
        name=name,
        delta_base=where(base) if base else None,
        lora=str((here / lora).absolute()) if lora else None,
        chat_template=_chat_template(entry.get("chat_template"), here, invalid),
        revision=entry.get("revision"),
        engine=engine,
    )


def inside(ref: str, here: Path, what: str, invalid: Any) -> Path:
    """``ref`` from the plan, taken from the plan's folder; a path out of it (absolute, ``..``,
    a link that leads out) is refused: a plan names only files beside it."""
    if not stays_inside(ref):
        raise invalid(
            f"{what} {ref!r} is not inside the plan's folder {here}",
            'give a path relative to the plan, without "..": a plan names only files beside it '
            "(pass other files on the command line)",
        )
    path = here / ref
    try:
        path.resolve().relative_to(here.resolve())
    except (ValueError, OSError, RuntimeError) as exc:
        raise invalid(f"{what} {ref!r} leads out of the plan's folder {here}", "fix it") from exc
    return path.absolute()


def _chat_template(value: str | None, here: Path, invalid: Any) -> str | None:
    """A FastChat name or ``auto`` as given; a Jinja file from the plan's folder."""
    from ggufkit.convert.chat_formats import FORMATS

    if value is None or value == "auto" or value in FORMATS:
        return value
    path = inside(value, here, "[[models]] chat_template", invalid)
    if not path.is_file():
        raise invalid(
            f"[[models]] chat_template {value!r}: no such file beside the plan",
            f"use auto, one of {', '.join(FORMATS)}, or a Jinja file relative to the plan",
        )
    return str(path)


def _settings(data: dict[str, Any], key: str, here: Path, invalid: Any) -> StepSettings:
    table = data.get(key)
    if table is None:
        return StepSettings()
    if not isinstance(table, dict):
        raise invalid(f"[{key}] must be a table")
    for name in table:
        if name not in ("enabled", "corpus", "ctx", "chunks"):
            raise invalid(f"[{key}]: unknown key {name!r}", "known: enabled, corpus, ctx, chunks")
    corpus = table.get("corpus")
    if corpus is not None and not inside(str(corpus), here, f"[{key}] corpus", invalid).is_file():
        raise invalid(f"[{key}] corpus {corpus} does not exist", "fix the path")
    for number in ("ctx", "chunks"):
        value = table.get(number)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise invalid(f"[{key}] {number} must be a positive integer")
    return StepSettings(
        enabled=bool(table.get("enabled", True)),
        corpus=inside(str(corpus), here, f"[{key}] corpus", invalid)
        if corpus is not None
        else None,
        ctx=int(table.get("ctx", 512)),
        chunks=table.get("chunks"),
    )
