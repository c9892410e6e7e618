"""One row of the matrix: build, convert with ggufkit's default engine, measure parity.

    python scripts/archmatrix/measure.py ROW WORKDIR     # prints the row's result as JSON

The result's status is one of STATUSES; a row is "proven" only by numbers that could have failed:
llama.cpp's f16 logits within F16_TOL of transformers' fp32 logits at every one of N_POSITIONS
positions, no argmax flipped where the reference's top-2 margin exceeds that tolerance, the
tokenizers equal on a mixed text (special tokens included), and the q8_0 file loading and running.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archmatrix.checkpoints import (
    BUILD_NOTES,
    CANNOT_BUILD,
    CHAT_SPECIALS,
    CORPUS,
    NOTES,
    UPSTREAM_CAUSES,
    build,
    read_config,
    variant,
)

STATUSES = ("proven", "converter", "llama.cpp", "parity off", "cannot be built")
F16_TOL = 0.005  # max |Δlogit| / max |logit|, as for the native LLaMA and BLOOM tests
N_POSITIONS = 96
Q8_BOUND = 0.5  # q8_0 must run and compute the model: bounds a broken file, not rounding
SEED = 11


@dataclass
class Result:
    name: str
    status: str = "cannot be built"
    cause: str = ""
    engine: str = ""
    gguf_arch: str = ""
    tokenizer: str = ""
    rel_diff: float | None = None
    argmax: float | None = None
    q8_rel_diff: float | None = None
    f32_rel_diff: float | None = None  # measured only where f16 parity is off
    n_tokens: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def mixed_text(model_dir: Path) -> str:
    """Prose, digits, code, non-Latin text and the tokenizer's own special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prose = CORPUS.read_text(encoding="utf-8")[:3000]
    specials = [t for t in (tokenizer.eos_token, tokenizer.bos_token) if t]
    specials += [t for t in CHAT_SPECIALS if t in tokenizer.get_vocab()]
    tail = "  def f(x):\n\treturn x**2  # 1234567 + 89\nÜber café, 東京 — ok!\n"
    return prose + tail + "".join(f"{s}Hello there" for s in specials)


def random_ids(model_dir: Path, n: int = N_POSITIONS) -> list[int]:
    return random_ids_for(int(read_config(model_dir).get("vocab_size") or 0), n)


def random_ids_for(vocab: int, n: int = N_POSITIONS) -> list[int]:
    """The positions measured: seeded token ids of a vocabulary of ``vocab``."""
    import numpy as np

    low = 8  # past the special tokens every tokenizer here starts with
    return [int(i) for i in np.random.default_rng(SEED).integers(low, min(vocab, 600), n)]


def first_line(exc: BaseException) -> str:
    """The cause in one line: the last exception line of a tool's tail, else the message."""
    import re

    tail = str(getattr(exc, "tail", "") or "")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    raised = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b")
    errors = [line for line in lines if raised.match(line)]
    text = errors[-1] if errors else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not errors and ":" not in text:
        text = f"{type(exc).__name__}: {text}"
    return text[:200]


def llama_cpp_says(path: Path) -> str:
    """llama.cpp's own reason for refusing or aborting on ``path``: the first error line of its
    loader, or the failed check (GGML_ASSERT / GGML_ABORT) with its source file, from a short
    llama-perplexity run (the Python bindings silence the loader's log)."""
    import re
    import subprocess

    from ggufkit.llamacpp.build import find_tool

    args = [str(find_tool("llama-perplexity")), "-m", str(path), "-f", str(CORPUS)]
    args += ["-c", "64", "--chunks", "1", "-t", "1"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return ""
    lines = (done.stdout + done.stderr).splitlines()
    for line in lines:
        if "error loading model: " in line:
            return line.split("error loading model: ", 1)[1].strip()[:200]
    for line in lines:
        if match := re.search(r"([\w.-]+:\d+): (GGML_(ASSERT|ABORT).*|fatal error.*)", line):
            return f"{match.group(2).strip()} ({match.group(1)})"[:200]
    for line in lines:
        if "what():" in line or "terminate called" in line:
            return line.strip()[:200]
    return ""


def stable(text: str, workdir: Path) -> str:
    """``text`` without the run's temporary paths (the table must not change from run to run)."""
    import re

    text = text.replace(f"{workdir}/", "").replace(str(workdir), ".")
    return re.sub(r"(/tmp|/var/tmp)/[^\s:'\"]*/", "", text)


def measure(name: str, workdir: Path) -> Result:
    started = time.perf_counter()
    row = variant(name)
    result = Result(name, tokenizer=row.tokenizer)
    try:
        _measure(row, workdir, result)
    except Exception as exc:  # the status says which step failed
        result.cause = first_line(exc)
        if result.status == "llama.cpp" and (
            "cannot load" in result.cause or "crashed" in result.cause
        ):
            said = llama_cpp_says(workdir / "model-f16.gguf")
            result.cause = f"{result.cause.split(': ')[0]}: {said}" if said else result.cause
        result.cause = stable(result.cause, workdir)
        if row.hf_architecture in CANNOT_BUILD:
            result.status = "cannot be built"
            result.cause = f"{CANNOT_BUILD[row.hf_architecture]} ({result.cause})"
        if "--debug" in sys.argv:
            traceback.print_exc()
    if result.status != "proven" and row.hf_architecture in UPSTREAM_CAUSES:
        result.cause = f"{result.cause}; cause: {UPSTREAM_CAUSES[row.hf_architecture]}"
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _measure(row: Any, workdir: Path, result: Result) -> None:
    from ggufkit.convert import convert
    from ggufkit.inference.parity import (
        compare_logits,
        gguf_logits,
        reference_logits,
        tokenizer_parity,
    )
    from ggufkit.quantize import quantize

    model_dir = build(row, workdir / "hf")
    ids = random_ids(model_dir)
    reference = reference_logits(model_dir, ids)
    result.status = "converter"
    converted = convert(model_dir, workdir / "model-f16.gguf", outtype="f16")
    result.engine, result.gguf_arch = converted.engine, converted.gguf_arch
    notes = [n for n in converted.notes if "derived" in n or "answer" in n]
    notes += [NOTES[row.hf_architecture]] if row.hf_architecture in NOTES else []
    notes += (model_dir / BUILD_NOTES).read_text(encoding="utf-8").splitlines()
    result.notes = list(dict.fromkeys(notes))  # upstream may read a config twice
    result.status = "llama.cpp"
    f16 = compare_logits(reference, gguf_logits(converted.output, ids))
    tokens = tokenizer_parity(converted.output, model_dir, mixed_text(model_dir))
    (q8,) = quantize(converted.output, ["q8_0"], outdir=workdir)
    q8_report = compare_logits(reference, gguf_logits(q8.output, ids))
    result.rel_diff, result.argmax = f16.rel_diff, f16.argmax_agreement
    result.q8_rel_diff, result.n_tokens = q8_report.rel_diff, tokens.n_reference
    result.status, result.cause = verdict(f16, tokens, q8_report)
    if result.cause.startswith("f16 logits"):  # a wrong conversion, or f16 rounding?
        f32_file = convert(model_dir, workdir / "model-f32.gguf", outtype="f32").output
        result.f32_rel_diff = compare_logits(reference, f32_logits(f32_file, ids)).rel_diff
        result.cause += f"; {f32_says(result.f32_rel_diff)}"


def f32_logits(path: Path, ids: list[int]) -> Any:
    """llama.cpp's logits for the f32 file computed in f32 throughout: llama.cpp keeps the
    KV cache in f16 by default and flash attention accumulates in f16, rounding enough to flip
    a near-tie expert choice of a random router (AFMoE's: 8.4% with them, 1.7e-6 without)."""
    from ggufkit.llamacpp.isolate import run_isolated

    return run_isolated(_f32_logits_here, str(path), ids, what=f"llama.cpp evaluating {path.name}")


def _f32_logits_here(path: str, ids: list[int]) -> Any:
    import numpy as np

    from ggufkit.llamacpp.bindings import load_llama_cpp
    from ggufkit.llamacpp.device import gpu_layers

    llama_cpp = load_llama_cpp()
    n_ctx = -(-len(ids) // 64) * 64
    f32 = 0  # ggml_type GGML_TYPE_F32
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        seed=0,
        type_k=f32,
        type_v=f32,
        flash_attn=False,
        n_gpu_layers=gpu_layers(),  # the same backend as the f16 measurement
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def f32_says(rel_diff: float) -> str:
    """What the f32 file's parity says about an f16 failure (the status stays the f16 one)."""
    if rel_diff <= F16_TOL:
        return (
            f"the f32 file (f32 KV cache) is within {100 * rel_diff:.2g}%: f16 rounding, not "
            "the conversion (it can flip a near-tie expert choice of a random router)"
        )
    return f"the f32 file is off too ({100 * rel_diff:.3f}%, f32 KV cache)"


def verdict(f16: Any, tokens: Any, q8: Any) -> tuple[str, str]:
    """("proven", "") or ("parity off", the first failed check) from the three reports."""
    if not f16.rel_diff <= F16_TOL:  # NaN fails too
        return "parity off", f"f16 logits: {f16.summary()}"
    if f16.decisive_mismatches(F16_TOL * f16.max_abs_logit):
        return "parity off", f"f16 argmax flipped beyond the tolerance: {f16.summary()}"
    if tokens is not None and not tokens.equal:
        return "parity off", f"tokenizer: {tokens.summary()}"
    if q8 is not None and not q8.rel_diff < Q8_BOUND:  # runs and computes the model (NaN fails)
        return "parity off", f"q8_0 logits: {q8.summary()}"
    return "proven", ""


def main(argv: list[str]) -> int:
    result = measure(argv[1], Path(argv[2]))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
