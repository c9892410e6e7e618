"""The upstream engine: the pinned llama.cpp ``convert_hf_to_gguf.py`` with its own gguf-py.

Used for architectures ggufkit has no converter for. The PyPI ``gguf`` does not work with that
script (it lacks ``LazyChunkedTensor``), so the pinned gguf-py beside it goes first on PYTHONPATH.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from pathlib import Path

from ggufkit.core.errors import ToolFailedError, ToolMissingError
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


def run_upstream(model_dir: Path, out_file: Path, *, outtype: str, expected_bytes: int) -> None:
    """Run the upstream converter writing ``out_file``; a progress bar follows the file's size."""
    _check_torch()
    source = _source()
    # PYTHONPATH comes before site-packages, so the pinned gguf-py wins over the PyPI one.
    env = {"PYTHONPATH": str(source / "gguf-py")}
    args = [
        sys.executable,
        str(source / SCRIPT),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    done = threading.Event()
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
                hint="see the log; this architecture may need a newer llama.cpp than the pinned one",
            )
        except ToolFailedError:
            out_file.unlink(missing_ok=True)
            raise
        finally:
            done.set()
            watcher.join()
