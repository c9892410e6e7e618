"""The test hook of tests/test_batch_ray.py, kept out of the package.

Python imports ``sitecustomize`` at start-up from the path; the test puts this folder on the
PYTHONPATH of its Ray cluster, so every worker loads it. With ``GGUFKIT_BATCH_HOLD`` set to
``<step id>=<marker file>``, that step's llama-quantize is held at its first progress line, after
the marker is written, until the process is killed; a retry finds the marker and runs on. The
worker moves to a process group of its own first, so that the test's kill takes it and its
llama-quantize only. Without the variable nothing is changed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

HOLD_ENV = "GGUFKIT_BATCH_HOLD"
HOLD_SECONDS = 600.0
TARGET = "ggufkit.workspace.batch.execute"


def held() -> tuple[str, Path] | None:
    step, _, marker = os.environ.get(HOLD_ENV, "").partition("=")
    return (step, Path(marker)) if step and marker else None


def holding_engine(marker: Path) -> Any:
    """llama-quantize that stops at its first progress line."""
    from ggufkit.core.fsutil import write_json_atomic
    from ggufkit.quantize.engines import BinaryEngine, binary_engine

    class HoldingEngine(BinaryEngine):
        def run(self, source, output, quant_type, options, on_progress=None):  # type: ignore[no-untyped-def]
            def hold(done: int, total: int) -> None:
                if not marker.exists():
                    record = {"pid": os.getpid(), "pgid": os.getpgid(0), "output": str(output)}
                    write_json_atomic(marker, record)
                    deadline = time.monotonic() + HOLD_SECONDS
                    while time.monotonic() < deadline:
                        time.sleep(0.2)
                if on_progress is not None:
                    on_progress(done, total)

            return super().run(source, output, quant_type, options, hold)

    return HoldingEngine(binary_engine().binary)


def patch(module: Any) -> None:
    """Wrap the module's quantize step: the held step's workspace quantizes with the engine."""
    original = module._quantize

    def held_quantize(plan: Any, ws: Any, step: Any) -> Any:
        hold = held()
        if hold is not None and hold[0] == step.id and not hold[1].exists():
            if os.getpgid(0) != os.getpid():
                os.setpgid(0, 0)
            engine, real = holding_engine(hold[1]), ws.quantize_type
            ws.quantize_type = lambda qtype, **kwargs: real(qtype, **{**kwargs, "engine": engine})
        return original(plan, ws, step)

    module._quantize = held_quantize


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches TARGET once it has been executed, wherever it is first imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            loader = spec.loader
            execute = loader.exec_module

            def exec_module(module: Any) -> None:
                execute(module)
                patch(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if held() is not None:
    sys.meta_path.insert(0, _AfterImport())
