"""`ggufkit imatrix`: an importance matrix from a calibration text, with the built ``llama-imatrix``.

The matrix (GGUF format) records how strongly each weight column is activated on the text; the
low-bit types (IQ1/IQ2/IQ3_XXS, Q2_K_S) need one, and every type benefits from one. Pass it on
with ``ggufkit quantize --imatrix FILE``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ggufkit.core.errors import InputError, ToolFailedError, UsageError
from ggufkit.core.fsutil import atomic_output, check_free_disk, check_output_path
from ggufkit.core.log import get_logger
from ggufkit.formats.gguf_reader import check_gguf, read_gguf
from ggufkit.formats.ggufinfo import GGUFInfo
from ggufkit.quantize.types import output_stem

log = get_logger("imatrix")

DEFAULT_CTX = 512  # llama-imatrix's own default
_PPL = re.compile(r"Final estimate: PPL = ([\d.]+)")
_CHUNKS = re.compile(r"computing over (\d+) chunks")
_ETA = re.compile(r"([\d.]+) seconds per pass - ETA")


@dataclass
class ImatrixResult:
    model: Path
    corpus: Path
    output: Path
    chunks: int | None
    entries: int
    perplexity: float | None
    seconds: float
    log_path: Path | None
    flash_attn: str = "auto"  # the setting passed as -fa
    flash_attn_resolved: str | None = None  # what llama.cpp made of it (its log)

    def to_json(self) -> dict[str, object]:
        return {
            "model": str(self.model),
            "corpus": str(self.corpus),
            "output": str(self.output),
            "chunks": self.chunks,
            "entries": self.entries,
            "perplexity": self.perplexity,
            "seconds": round(self.seconds, 3),
            "flash_attn": self.flash_attn,
            "flash_attn_resolved": self.flash_attn_resolved,
            "log": None if self.log_path is None else str(self.log_path),
        }


def default_output(model: Path) -> Path:
    """``my-model-f16.gguf`` -> ``my-model-imatrix.gguf`` beside it."""
    return model.with_name(f"{output_stem(model, ())}-imatrix.gguf")


def _check_corpus(corpus: Path) -> None:
    if not corpus.is_file():
        raise InputError(
            f"calibration text {corpus} does not exist",
            hint="give a plain-text file (a few hundred KB of text like the model's use)",
            path=corpus,
        )
    if corpus.stat().st_size == 0:
        raise InputError(f"calibration text {corpus} is empty", path=corpus)
    with open(corpus, "rb") as handle:
        head = handle.read(4096)
    if b"\0" in head:
        raise InputError(
            f"calibration text {corpus} looks binary, not text",
            hint="give a .txt file",
            path=corpus,
        )


def _check_enough_tokens(model: Path, corpus: Path, ctx_size: int) -> None:
    """llama-imatrix needs two chunks of text, but when it exits for that reason its (asynchronous)
    log is often lost: count the tokens first, with the model's own tokenizer."""
    from ggufkit.core.errors import ToolMissingError
    from ggufkit.llamacpp.bindings import load_llama_cpp, vocab_only

    try:
        load_llama_cpp()
    except ToolMissingError:
        return  # the binary will still refuse; only the message is less clear
    need = 2 * ctx_size
    size = corpus.stat().st_size
    budget = need * 32  # bytes: far more than enough text for `need` tokens in any tokenizer
    with open(corpus, "rb") as handle:
        text = handle.read(budget)
    with vocab_only(model) as vocab:  # no context: none is needed to tokenize
        count = len(vocab.tokenize(text, add_bos=True, special=False))
    if count < need and size <= budget:
        raise InputError(
            f"calibration text {corpus} is too short: {count} tokens, llama-imatrix needs at "
            f"least {need} (2 x --ctx-size {ctx_size})",
            hint="give a longer text or a smaller --ctx-size",
            path=corpus,
        )


def compute_imatrix(
    model: str | Path,
    corpus: str | Path,
    *,
    output: str | Path | None = None,
    ctx_size: int = DEFAULT_CTX,
    chunks: int | None = None,
    threads: int | None = None,
) -> ImatrixResult:
    """Run ``llama-imatrix`` on ``corpus``; the matrix is written atomically to ``output``."""
    from ggufkit.llamacpp.attention import (
        current_flash_attn,
        fa_args,
        resolved_flash_attn,
        resolved_from_log,
    )
    from ggufkit.llamacpp.build import find_tool
    from ggufkit.llamacpp.device import ngl_args
    from ggufkit.llamacpp.runner import new_log_path, run_tool, short_corpus_error

    model, corpus = Path(model), Path(corpus)
    if ctx_size < 8:
        raise UsageError(
            f"--ctx-size {ctx_size} is too small", hint="use 128 or more (default 512)"
        )
    if chunks is not None and chunks < 1:
        raise UsageError("--chunks must be at least 1")
    info: GGUFInfo = check_gguf(model)
    _check_corpus(corpus)
    target = Path(output) if output is not None else default_output(model)
    check_output_path(target, inputs=(model, corpus))
    if target.absolute() in (model.absolute(), corpus.absolute()):
        raise UsageError(f"output {target} is one of the inputs", hint="choose another -o")
    # Sums and counts in f32 for every 2-D weight: at most one row's worth per matrix.
    check_free_disk(target, sum(4 * (t.shape[0] + 1) for t in info.tensors) + (1 << 20))
    tool = find_tool("llama-imatrix")
    _check_enough_tokens(model, corpus, ctx_size)
    log.info("computing an importance matrix for %s on %s", model.name, corpus.name)
    started = time.perf_counter()

    def on_line(line: str) -> None:
        if match := _CHUNKS.search(line):
            log.info("llama-imatrix: %s chunks of %d tokens", match.group(1), ctx_size)
        elif match := _ETA.search(line):
            log.info("llama-imatrix: %s s per pass", match.group(1))

    with atomic_output(target) as tmp:
        args: list[str | Path] = [
            tool, "-m", model, "-f", corpus, "-o", tmp, "--output-format", "gguf",
            "-c", str(ctx_size), *ngl_args(), *fa_args(),
        ]  # fmt: skip
        if chunks is not None:
            args += ["--chunks", str(chunks)]
        if threads is not None:
            args += ["-t", str(threads)]
        try:
            result = run_tool(
                args, what="llama-imatrix", on_line=on_line, log_path=new_log_path("imatrix")
            )
        except ToolFailedError as exc:
            short = short_corpus_error(
                exc.tail, corpus, tool="llama-imatrix", hint="give a longer text or a smaller --ctx"
            )
            if short is not None:
                raise short from exc
            raise
        written = read_gguf(tmp, max_array_items=4)
    seconds = time.perf_counter() - started
    ppl = _PPL.search(result.stdout)
    n_chunks = written.metadata.get("imatrix.chunk_count")
    entries = sum(1 for t in written.tensors if t.name.endswith(".in_sum2"))
    log.info(
        "importance matrix: %d tensors, %s chunks, %.1f s -> %s", entries, n_chunks, seconds, target
    )
    return ImatrixResult(
        model=model,
        corpus=corpus,
        output=target,
        chunks=n_chunks if isinstance(n_chunks, int) else None,
        entries=entries,
        perplexity=float(ppl.group(1)) if ppl else None,
        seconds=seconds,
        log_path=result.log_path,
        flash_attn=current_flash_attn(),
        flash_attn_resolved=resolved_from_log(result.stdout) or resolved_flash_attn(),
    )
