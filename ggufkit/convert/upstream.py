"""The upstream engine: the pinned llama.cpp ``convert_hf_to_gguf.py`` with its own gguf-py.

Used for architectures ggufkit has no converter for. The PyPI ``gguf`` does not work with that
script (it lacks ``LazyChunkedTensor``), so it runs in a child process (``_upstream_child.py``)
that puts the pinned gguf-py first and gives upstream ggufkit's answers where upstream would stop
or be wrong: the pre-tokenizer of a BPE tokenizer whose hash upstream does not list (derived
from tokenizer.json as for native BLOOM), Falcon's multi-query head count, the chat template.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ggufkit.convert.chat_templates import ChatTemplateChoice, child_settings
from ggufkit.core.errors import GGUFKitError, ToolFailedError, ToolMissingError
from ggufkit.core.log import get_logger, progress
from ggufkit.llamacpp.runner import run_tool
from ggufkit.llamacpp.source import ensure_source

log = get_logger("convert.upstream")

SCRIPT = "convert_hf_to_gguf.py"


def _source() -> Path:
    source = ensure_source()
    if not (source / SCRIPT).is_file() or not (source / "gguf-py" / "gguf").is_dir():
        raise ToolMissingError(
            f"the pinned llama.cpp source at {source} lacks {SCRIPT} or gguf-py",
            hint=f"delete {source} and run `ggufkit build` to unpack it again",
        )
    return source


@functools.cache
def upstream_architectures() -> frozenset[str]:
    """HF class names the pinned upstream converter registers (read from its source, not run)."""
    source = _source()
    files = [source / SCRIPT, *sorted((source / "conversion").glob("*.py"))]
    names: set[str] = set()
    register = re.compile(r"\.register\(([^)]*)\)", re.S)
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError:
            continue
        for match in register.finditer(text):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", match.group(1)))
    return frozenset(names)


def upstream_supports(hf_arch: str) -> bool:
    try:
        return hf_arch in upstream_architectures()
    except Exception as exc:  # no source: treated as "not known upstream"
        log.debug("cannot read the upstream converter's registry: %s", exc)
        return False


def _check_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ToolMissingError(
            "the upstream converter needs torch, which is not installed",
            hint="pip install 'ggufkit[torch]'",
        ) from exc


def derived_pre_tokenizer(model_dir: Path) -> str | None:
    """The pre-tokenizer ggufkit derives from tokenizer.json, or None (no BPE, or cannot tell)."""
    from ggufkit.convert.vocab_bpe import (
        check_text_hash,
        detect_pre_tokenizer,
        load_tokenizer_json,
    )

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        data = load_tokenizer_json(model_dir)
        check_hash = check_text_hash(Tokenizer.from_file(str(path)))
        return detect_pre_tokenizer(data, path=path, check_hash=check_hash).name
    except GGUFKitError as exc:
        log.debug("no pre-tokenizer derived from %s: %s", path, exc)
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        log.debug("the tokenizers library cannot load %s: %s", path, exc)
    return None


def _hparam_answers(model_dir: Path) -> dict[str, Any]:
    """Config fields ggufkit gives upstream (``arch_answers``): transformers' values it lacks."""
    from ggufkit.convert.arch_answers import hparam_answers

    try:
        return hparam_answers(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return {}


def run_upstream(
    model_dir: Path,
    out_file: Path,
    *,
    outtype: str,
    expected_bytes: int,
    chat: ChatTemplateChoice | None = None,
) -> list[str]:
    """Run the upstream converter writing ``out_file``; returns notes for the result.

    A progress bar follows the file's size.
    """
    _check_torch()
    source = _source()
    settings: dict[str, Any] = {
        "source": str(source),
        "pre_tokenizer": derived_pre_tokenizer(model_dir),
        "hparams": _hparam_answers(model_dir),
    }
    if chat is not None:
        settings |= child_settings(chat)
    notes = [chat.note()] if chat is not None else []
    with tempfile.TemporaryDirectory(prefix="ggufkit-upstream-") as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        args = [
            sys.executable,
            str(Path(__file__).with_name("_upstream_child.py")),
            str(settings_file),
            str(model_dir),
            "--outfile",
            str(out_file),
            "--outtype",
            outtype,
        ]
        _run(args, model_dir, out_file, expected_bytes, notes)
    return notes


def _run(
    args: list[str], model_dir: Path, out_file: Path, expected_bytes: int, notes: list[str]
) -> None:
    # PYTHONPATH comes before site-packages, so the pinned gguf-py wins over the PyPI one.
    env = {"PYTHONPATH": str(_source() / "gguf-py")}
    done = threading.Event()

    def on_line(line: str) -> None:
        if line.startswith("ggufkit: "):  # the child's own remarks
            notes.append(line.removeprefix("ggufkit: ").strip())

    with progress(expected_bytes or None, f"converting {model_dir.name} (upstream)") as bar:

        def follow() -> None:
            while not done.wait(0.5):
                try:
                    size = out_file.stat().st_size
                except OSError:
                    continue
                bar.n = min(size, expected_bytes) if expected_bytes else size
                bar.refresh()

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        try:
            run_tool(
                args,
                what=f"the upstream converter ({SCRIPT})",
                env=env,
                merge_stderr=True,
                on_line=on_line,
                hint="see the log; this architecture may need a newer llama.cpp than the pinned one",
            )
        except ToolFailedError:
            out_file.unlink(missing_ok=True)
            raise
        finally:
            done.set()
            watcher.join()
