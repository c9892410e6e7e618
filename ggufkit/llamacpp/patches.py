"""ggufkit's committed patches to the pinned llama.cpp (``vendor/patches/*.patch``).

They are unified diffs applied in name order to the unpacked source, after its sha256 check. A
pure-Python applier keeps the build free of `patch` and `git` (Windows has neither by default).
Their digest is part of the source stamp, the build key and the provenance of every file made.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core import paths
from ggufkit.core.errors import InputError

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# How far a hunk may have moved from the line its header names (the pinned source never changes,
# so this only tolerates an earlier hunk of the same file having shifted lines).
MAX_OFFSET = 200


@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based
    old_lines: list[str]
    new_lines: list[str]


@dataclass(frozen=True)
class FilePatch:
    path: str  # relative to the source root, forward slashes
    hunks: list[Hunk]


def patches_dir() -> Path:
    """``vendor/patches`` of the source checkout ggufkit runs from."""
    root = paths.project_root()
    if root is None:
        raise InputError(
            "the llama.cpp patches (vendor/patches) are not found: ggufkit is not running from "
            "its source checkout",
            hint="install ggufkit from a clone with `pip install -e .` (or `make install`)",
        )
    return root / "vendor" / "patches"


def patch_files(directory: Path | None = None) -> list[Path]:
    directory = directory or patches_dir()
    return sorted(directory.glob("*.patch")) if directory.is_dir() else []


def patches_digest(files: list[Path] | None = None) -> str:
    """sha256 over the patches' names and bytes; "none" when there are none."""
    files = patch_files() if files is None else files
    if not files:
        return "none"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def parse_patch(text: str, name: str = "patch") -> list[FilePatch]:
    """The files and hunks of a unified diff; text before the first ``---`` is its description."""
    lines = text.splitlines()
    result: list[FilePatch] = []
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("--- ") and i + 1 < len(lines)):
            i += 1
            continue
        if not lines[i + 1].startswith("+++ "):
            raise InputError(f"{name}: '---' at line {i + 1} is not followed by '+++'")
        target = lines[i + 1][4:].split("\t")[0].strip()
        target = target[2:] if target.startswith("b/") else target
        hunks: list[Hunk] = []
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            match = _HUNK.match(lines[i])
            if not match:
                raise InputError(f"{name}: bad hunk header at line {i + 1}: {lines[i]!r}")
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            old: list[str] = []
            new: list[str] = []
            i += 1
            while i < len(lines) and (len(old) < old_count or len(new) < new_count):
                line = lines[i]
                tag, body = (line[:1], line[1:]) if line else (" ", "")
                if tag == " ":
                    old.append(body)
                    new.append(body)
                elif tag == "-":
                    old.append(body)
                elif tag == "+":
                    new.append(body)
                elif tag != "\\":  # "\ No newline at end of file"
                    raise InputError(f"{name}: unexpected line {i + 1} in a hunk: {line!r}")
                i += 1
            if len(old) != old_count or len(new) != new_count:
                raise InputError(f"{name}: a hunk of {target} is truncated")
            hunks.append(Hunk(int(match.group(1)), old, new))
        if not hunks:
            raise InputError(f"{name}: no hunks for {target}")
        result.append(FilePatch(target, hunks))
    if not result:
        raise InputError(f"{name} contains no file changes")
    return result


def _find(lines: list[str], block: list[str], expected: int) -> int | None:
    """Where ``block`` occurs in ``lines``, searching outwards from ``expected`` (0-based)."""
    for offset in range(MAX_OFFSET + 1):
        for start in {expected - offset, expected + offset}:
            if 0 <= start <= len(lines) - len(block) and lines[start : start + len(block)] == block:
                return start
    return None


def apply_patch(source_root: Path, patch: Path) -> list[str]:
    """Apply one patch file under ``source_root``; returns the files changed.

    Every hunk must match exactly (no fuzz): a patch that does not fit the pinned source is an
    error, never a partial application.
    """
    changed: list[str] = []
    for file_patch in parse_patch(patch.read_text(encoding="utf-8"), patch.name):
        target = source_root / file_patch.path
        if not target.is_file():
            raise InputError(f"{patch.name}: {file_patch.path} is not in the llama.cpp source")
        with open(target, encoding="utf-8", newline="") as handle:
            text = handle.read()
        newline = "\r\n" if "\r\n" in text else "\n"
        ends_with_newline = text.endswith(newline)
        lines = text.split(newline)
        if ends_with_newline:
            lines.pop()
        shift = 0
        for hunk in file_patch.hunks:
            start = _find(lines, hunk.old_lines, hunk.old_start - 1 + shift)
            if start is None:
                raise InputError(
                    f"{patch.name} does not apply to {file_patch.path} "
                    f"(hunk at line {hunk.old_start})",
                    hint="the patch was made for another llama.cpp; compare it with llama.cpp.lock",
                )
            lines[start : start + len(hunk.old_lines)] = hunk.new_lines
            shift += len(hunk.new_lines) - len(hunk.old_lines)
        with open(target, "w", encoding="utf-8", newline="") as handle:
            handle.write(newline.join(lines) + (newline if ends_with_newline else ""))
        changed.append(file_patch.path)
    return changed


def apply_all(source_root: Path, files: list[Path] | None = None) -> list[str]:
    """Apply every committed patch in order; returns the patch names applied."""
    files = patch_files() if files is None else files
    for patch in files:
        apply_patch(source_root, patch)
    return [patch.name for patch in files]
