"""Which files of a model repo (or local model directory) a conversion needs, and checks on repo
ids and file names."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ggufkit.core.errors import HubError, UsageError

# owner/name as the Hub accepts it; "." / ".." parts and "--" are refused by the Hub too.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
    "vocab.txt", "chat_template.jinja", "chat_template.json", "*.tiktoken",
)  # fmt: skip
# Trainer checkpoints ship these beside the weights; they are not model weights.
TRAINING_STATE = (
    "training_args.bin",
    "optimizer*",
    "scheduler*",
    "rng_state*",
    "trainer_state.json",
)


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and "--" not in text


def check_repo_id(repo_id: str) -> None:
    if not looks_like_repo_id(repo_id):
        raise UsageError(
            f"{repo_id!r} is not a Hub repo id",
            hint="use the form owner/name, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        )


def is_safe_name(name: str) -> bool:
    """A repo file name that stays inside the directory it is downloaded to."""
    parts = PurePosixPath(name).parts
    return bool(parts) and "\\" not in name and not name.startswith("/") and ".." not in parts


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_model_files(names: Iterable[str]) -> list[str]:
    """The files a conversion needs: config, tokenizer, and one weight format.

    Safetensors when the repo has them, else PyTorch ``.bin``; only top-level files, so other
    formats in sub-folders (onnx/, checkpoints), images and training states are skipped.
    """
    top = sorted(n for n in names if "/" not in n and not _matches(n, TRAINING_STATE))
    chosen = [n for n in top if n in CONFIG_FILES or _matches(n, TOKENIZER_FILES)]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    # Mistral-style repos carry the same weights twice (model-*.safetensors and consolidated.*).
    preferred = [n for n in safetensors if n.startswith("model")]
    if safetensors:
        chosen += (preferred or safetensors) + [
            n for n in top if n.endswith(".safetensors.index.json")
        ]
    else:
        bins = [n for n in top if n.endswith(".bin")]
        preferred = [n for n in bins if n.startswith("pytorch_model")]
        chosen += (preferred or bins) + [n for n in top if n.endswith(".bin.index.json")]
    return sorted(set(chosen))


def weight_files(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.endswith((".safetensors", ".bin"))]


def model_files(directory: Path) -> list[Path]:
    """The files of a local model directory that a conversion reads (see select_model_files)."""
    names = [p.name for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []
    return [directory / name for name in select_model_files(names)]


@dataclass
class Selection:
    """The files to fetch: the default selection, or --include/--exclude globs."""

    repo_id: str
    include: list[str]
    exclude: list[str]

    def choose(self, names: Iterable[str], where: str) -> list[str]:
        from huggingface_hub.utils import filter_repo_objects

        names = list(names)
        if self.include:
            chosen = list(
                filter_repo_objects(
                    names, allow_patterns=self.include, ignore_patterns=self.exclude or None
                )
            )
            if not chosen:
                raise HubError(
                    f"no file of {where} matches --include {' '.join(self.include)}",
                    hint=f"the repo has: {', '.join(sorted(names)[:12])}",
                )
        else:
            chosen = list(
                filter_repo_objects(select_model_files(names), ignore_patterns=self.exclude or None)
            )
            if not weight_files(chosen):
                excluded = (
                    " (after --exclude)"
                    if self.exclude and weight_files(select_model_files(names))
                    else ""
                )
                raise HubError(
                    f"{where} has no model weights{excluded}: no *.safetensors or *.bin at its top level",
                    hint="check the repo id and --revision, or choose files with --include",
                )
        unsafe = [n for n in chosen if not is_safe_name(n)]
        if unsafe:
            raise HubError(
                f"{where} lists a file name that would escape the download directory: {unsafe[0]!r}",
                hint="do not download this repo; report it to its owner",
            )
        return sorted(chosen)
