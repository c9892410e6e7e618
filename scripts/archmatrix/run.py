"""The architecture matrix: every text architecture both pins know, built, converted, measured.

    python scripts/archmatrix/run.py [--jobs N] [--only NAME,...] [--keep DIR]

(or ``python tools/dev.py families``). The rows are the ``...ForCausalLM`` classes that both
transformers and the pinned upstream converter register, plus LLaMA with a byte-level BPE
tokenizer. Each row runs in its own process (``measure.py``); the results are written to
ggufkit/convert/families.json (which ``ggufkit families`` and ``ggufkit convert`` read) and
docs/architectures.md, both generated here and never edited by hand. ``--only`` measures some
rows and merges them into the existing files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archmatrix.checkpoints import ROOT, TOKENIZERS, Variant
from archmatrix.measure import stable
from ggufkit.convert.families import MATRIX_FILE, render_markdown

DOC = ROOT / "docs" / "architectures.md"
ROW_TIMEOUT = 600
EXTRA_ROWS = (Variant("LlamaForCausalLM", "bpe"),)
# The fast subset in `make test` (tests/test_architectures.py): the most used families.
FAST = (
    "LlamaForCausalLM",
    "LlamaForCausalLM (bpe)",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "FalconForCausalLM",
    "StableLmForCausalLM",
)


def architectures() -> list[str]:
    """``...ForCausalLM`` classes registered by both the pinned converter and transformers."""
    import transformers

    from ggufkit.convert.upstream import upstream_architectures

    return sorted(
        name
        for name in upstream_architectures()
        if name.endswith("ForCausalLM") and hasattr(transformers, name)
    )


def rows() -> list[Variant]:
    default = [Variant(a, TOKENIZERS.get(a, "bpe")) for a in architectures()]
    return sorted([*default, *EXTRA_ROWS], key=lambda v: v.name.lower())


def run_row(row: Variant, keep: Path | None) -> dict[str, Any]:
    script = Path(__file__).with_name("measure.py")
    with tempfile.TemporaryDirectory(prefix="archmatrix-") as tmp:
        workdir = keep / row.name.replace(" ", "_") if keep else Path(tmp)
        env = {**os.environ, "GGUFKIT_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, str(script), row.name, str(workdir)],
                capture_output=True,
                text=True,
                env=env,
                timeout=ROW_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            cause = f"timed out after {ROW_TIMEOUT} s"
            return {"name": row.name, "status": "cannot be built", "cause": cause}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if lines:
            return dict(json.loads(lines[-1]))
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        tail = stable(tail, workdir)
        seconds = round(time.perf_counter() - started, 1)
        # The measuring process itself died: in-process torch code (the reference) crashed.
        return {"name": row.name, "status": "cannot be built", "cause": tail, "seconds": seconds}


def pins() -> dict[str, str]:
    import transformers

    from ggufkit.llamacpp.source import read_pin

    return {"transformers": transformers.__version__, "llama_cpp": read_pin().llama_cpp_commit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated row names (merged)")
    parser.add_argument("--fast", action="store_true", help="only the fast subset (merged)")
    parser.add_argument("--keep", type=Path, help="keep each row's files under this directory")
    args = parser.parse_args(argv)
    if os.environ.get("ARCHMATRIX_TRY_CONFIG"):
        parser.error("ARCHMATRIX_TRY_CONFIG is for trying a row by hand, not for a recorded run")
    selected = rows()
    wanted = set(FAST) if args.fast else {n.strip() for n in args.only.split(",") if n.strip()}
    if wanted:
        selected = [r for r in selected if r.name in wanted]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    if wanted and MATRIX_FILE.is_file():
        results = {r["name"]: r for r in json.loads(MATRIX_FILE.read_text())["rows"]}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(lambda r: run_row(r, args.keep), selected):
            results[result["name"]] = result
            print(f"{result['name']}: {result['status']} {result.get('cause', '')}", flush=True)
    wall = round(time.perf_counter() - started)
    ordered = [results[r.name] for r in rows() if r.name in results]
    matrix = {"pins": pins(), "wall_seconds": wall, "jobs": args.jobs, "rows": ordered}
    if wanted:  # rows rerun into the last whole run: its time and jobs stand
        whole = json.loads(MATRIX_FILE.read_text())
        matrix |= {k: whole[k] for k in ("wall_seconds", "jobs") if k in whole}
    MATRIX_FILE.write_text(json.dumps(matrix, indent=1) + "\n", encoding="utf-8")
    DOC.write_text(render_markdown(matrix), encoding="utf-8")
    print(f"wrote {MATRIX_FILE} and {DOC} ({wall} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
