"""``ggufkit.toml``: what a workspace builds (source, names, types), and ``ggufkit init``."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import InputError, UsageError, WorkspaceError
from ggufkit.core.fsutil import read_toml, stays_inside, write_text_atomic
from ggufkit.core.log import get_logger
from ggufkit.hub import looks_like_repo_id

log = get_logger("workspace")

CONFIG_NAME = "ggufkit.toml"
_TYPE = re.compile(r"[a-z0-9_]+")
ENGINES = ("auto", "native", "upstream")  # ggufkit.convert.ENGINES, without importing it
MMPROJ_TYPES = ("f16", "bf16", "f32", "q8_0")  # ggufkit.convert.OUTTYPE_NAMES, likewise

TEMPLATE = """\
# ggufkit workspace: `ggufkit convert && ggufkit quantize` build what this file describes.
# Steps whose inputs (sha256) and options have not changed are skipped; --force redoes them.
# `ggufkit status` shows each artefact; <outdir>/manifest.json records how each was made.

# The model: a directory (relative to this file) or a Hugging Face Hub id (owner/name).
source = {source}
# Hub branch, tag or commit sha (Hub sources only; default: main).
{revision}
# When `source` is a delta (weights minus a base model): the base it is added to.
{delta_base}
# A PEFT LoRA adapter directory (relative to this file), merged into `source` while converting.
{lora}

# Outputs: <outdir>/<name>-<OUTTYPE>.gguf, then <outdir>/<name>-<TYPE>.gguf per type.
name = {name}
outdir = {outdir}
# The converted file's type: f16, bf16, f32 or q8_0.
outtype = {outtype}
# A vision-language model: its projector's type, mmproj-<name>-<TYPE>.gguf (default f16;
# quantize makes the language model's types only).
{mmproj_type}
# Cut each output into a split set of files with at most this much tensor data (M or G,
# decimal; the Hub refuses files over 50 GB). `--split-max-size` on the command line overrides.
{split_max_size}
# The converter: auto (ggufkit's native one where it can, else the pinned upstream
# convert_hf_to_gguf.py), native, or upstream. `ggufkit convert --engine` overrides it.
{engine}
# The chat template written at conversion: auto (the checkpoint's own, else one recognised from
# the name), a FastChat name (vicuna_v1.1, one_shot, zero_shot, phoenix, llama-2) or a Jinja file.
{chat_template}
# What `ggufkit quantize` makes when given no types.
types = [{types}]

# An importance matrix made from the converted file and used by every quantize: corpus is a
# text file in this folder (default: the calibration text shipped with ggufkit).
{imatrix}
"""


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class ImatrixTable:
    """``[imatrix]``: an importance matrix made from the converted file, used by every quantize."""

    corpus: str | None = None  # inside the workspace; None: the embedded calibration text
    ctx: int = 512
    chunks: int | None = None

    @classmethod
    def parse(cls, table: object, invalid: Any) -> ImatrixTable:
        if not isinstance(table, dict):
            raise invalid("[imatrix] must be a table", "e.g. [imatrix] with corpus, ctx, chunks")
        for key in table:
            if key not in ("corpus", "ctx", "chunks"):
                raise invalid(f"[imatrix]: unknown key {key!r}", "known: corpus, ctx, chunks")
        corpus = table.get("corpus")
        if corpus is not None and not (isinstance(corpus, str) and stays_inside(corpus)):
            raise invalid("[imatrix] corpus must be a file inside the workspace", 'e.g. "cal.txt"')
        for key in ("ctx", "chunks"):
            value = table.get(key)
            if value is not None and (type(value) is not int or value < 1):
                raise invalid(f"[imatrix] {key} must be a positive integer", f"e.g. {key} = 512")
        return cls(corpus, int(table.get("ctx", 512)), table.get("chunks"))


@dataclass
class WorkspaceConfig:
    source: str
    name: str
    revision: str | None = None
    delta_base: str | None = None
    lora: str | None = None
    outdir: str = "out"
    outtype: str = "f16"
    split_max_size: str | None = None
    engine: str | None = None  # None: auto
    chat_template: str | None = None  # None: auto
    mmproj_type: str | None = None  # None: f16 (a vision-language model's projector)
    imatrix: ImatrixTable | None = None  # None: no importance matrix
    types: list[str] = field(default_factory=lambda: ["q4_0"])  # the last string field

    @classmethod
    def from_toml(cls, path: Path) -> WorkspaceConfig:
        def invalid(message: str, hint: str) -> WorkspaceError:
            return WorkspaceError(f"{path}: {message}", hint=hint, path=path)

        try:
            data = read_toml(
                path, WorkspaceError
            )  # refuses fifos, huge and too deeply nested files
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise invalid(
                f"not valid TOML ({exc})", "fix it, or rewrite it: `ggufkit init SOURCE --force`"
            ) from exc
        known = list(cls.__dataclass_fields__)
        if "imatrix" in data:
            data["imatrix"] = ImatrixTable.parse(data["imatrix"], invalid)
        for key in data:
            if key not in known:
                raise invalid(f"unknown setting {key!r}", f"known settings: {', '.join(known)}")
        # Every setting but `types` is a string; `source` and `name` are required.
        for key in known[:-2]:
            value = data.get(key, "" if key in ("source", "name") else None)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise invalid(f"`{key}` must be a non-empty string", f'e.g. {key} = "..."')
        if default_name(data["name"]) != data["name"]:
            raise invalid(
                f"`name` {data['name']!r} is not a plain file name",
                "use letters, digits, . _ - (outputs are named <name>-<TYPE>.gguf)",
            )
        if "outdir" in data and not stays_inside(data["outdir"]):
            raise invalid(
                f"`outdir` {data['outdir']!r} is not a folder inside the workspace",
                'give a relative path without "..", e.g. outdir = "out"',
            )
        types = data.get("types", ["q4_0"])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise invalid("`types` must be a list of strings", 'e.g. types = ["q4_0", "q8_0"]')
        data["types"] = parse_types(",".join(types))
        if data.get("split_max_size") is not None:
            from ggufkit.formats.gguf_split import parse_size

            try:
                parse_size(data["split_max_size"])
            except UsageError as exc:
                raise invalid(f"`split_max_size`: {exc}", exc.hint or "") from exc
        if data.get("mmproj_type") is not None and data["mmproj_type"] not in MMPROJ_TYPES:
            raise invalid(
                f"`mmproj_type` {data['mmproj_type']!r} is unknown",
                f"choose {', '.join(MMPROJ_TYPES)}",
            )
        if data.get("engine") is not None and data["engine"] not in ENGINES:
            raise invalid(f"`engine` {data['engine']!r} is unknown", f"choose {', '.join(ENGINES)}")
        return cls(**data)

    def to_toml(self) -> str:
        """The commented, human-editable file ``ggufkit init`` writes."""

        def optional(key: str, value: str | None, example: str) -> str:
            return f"{key} = {_toml_str(value)}" if value else f"# {key} = {_toml_str(example)}"

        return TEMPLATE.format(
            source=_toml_str(self.source),
            revision=optional("revision", self.revision, "main"),
            delta_base=optional("delta_base", self.delta_base, "owner/base-model"),
            lora=optional("lora", self.lora, "my-lora"),
            name=_toml_str(self.name),
            outdir=_toml_str(self.outdir),
            outtype=_toml_str(self.outtype),
            mmproj_type=optional("mmproj_type", self.mmproj_type, "f16"),
            split_max_size=optional("split_max_size", self.split_max_size, "50G"),
            engine=optional("engine", self.engine, "upstream"),
            chat_template=optional("chat_template", self.chat_template, "vicuna_v1.1"),
            types=", ".join(_toml_str(t) for t in self.types),
            imatrix=_imatrix_toml(self.imatrix),
        )


def _imatrix_toml(table: ImatrixTable | None) -> str:
    if table is None:
        return '# [imatrix]\n# corpus = "calibration.txt"\n# ctx = 512\n# chunks = 100'
    lines = ["[imatrix]"] + ([f"corpus = {_toml_str(table.corpus)}"] if table.corpus else [])
    lines.append(f"ctx = {table.ctx}")
    return "\n".join(lines + ([f"chunks = {table.chunks}"] if table.chunks else []))


def parse_types(text: str) -> list[str]:
    """``"q4_0, Q8_0"`` -> ``["q4_0", "q8_0"]``, without duplicates."""
    types: list[str] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if item and not _TYPE.fullmatch(item):
            raise UsageError(f"{raw.strip()!r} is not a quantization type", hint="e.g. q4_0,q8_0")
        if item and item not in types:
            types.append(item)
    return types


def default_name(source: str) -> str:
    base = source.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"


def init_workspace(
    directory: Path,
    source: str,
    *,
    delta_base: str | None = None,
    name: str | None = None,
    types: Sequence[str] = ("q4_0",),
    outdir: str = "out",
    outtype: str = "f16",
    revision: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``directory/ggufkit.toml``. SOURCE and BASE must be directories or Hub ids; nothing
    is downloaded yet."""
    target = directory / CONFIG_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="edit it, or pass --force to replace it")
    for label, ref in (("SOURCE", source), ("--delta-base", delta_base)):
        if ref is not None and not (directory / ref).is_dir() and not looks_like_repo_id(ref):
            raise InputError(
                f"{label} {ref}: no such directory, and not a Hub id (owner/name)",
                hint="give a model directory (relative to here) or a Hub id such as owner/name",
            )
    if revision and (directory / source).is_dir():
        raise UsageError("--revision applies to Hub sources only", hint="drop --revision")
    name = name or default_name(source)
    if default_name(name) != name:
        raise UsageError(
            f"--name {name!r} is not a plain file name", hint="use letters, digits, . _ -"
        )
    if not stays_inside(outdir):
        raise UsageError(
            f"--outdir {outdir!r} is not a folder inside the workspace",
            hint='give a relative path without "..", e.g. --outdir out',
        )
    config = WorkspaceConfig(
        source=source,
        name=name,
        revision=revision,
        delta_base=delta_base,
        outdir=outdir,
        outtype=outtype.lower(),
        types=list(types) or ["q4_0"],
    )
    write_text_atomic(target, config.to_toml())
    return target
