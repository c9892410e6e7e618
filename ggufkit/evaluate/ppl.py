"""Perplexity and KL-divergence through ``llama-perplexity``: corpus planning, runs, output parsing.

The f16 baseline runs once with ``--kl-divergence-base FILE`` (its perplexity, plus its token
log-probabilities saved to FILE); every other model runs with ``--kl-divergence`` against FILE,
which yields its perplexity on the same tokens, the KL-divergence and the top-token agreement.

The pinned llama.cpp logs through a background thread that was never drained at exit, so about
one run in ten lost its last lines. ggufkit's patch (vendor/patches/0001) drains it before
``main`` returns, so the final statistics are always there and are the only numbers read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ggufkit.core.errors import EvaluationError, UsageError
from ggufkit.core.log import get_logger
from ggufkit.llamacpp.attention import fa_args
from ggufkit.llamacpp.build import find_tool
from ggufkit.llamacpp.device import ngl_args
from ggufkit.llamacpp.runner import ToolResult, run_tool, short_corpus_error

log = get_logger("evaluate.ppl")

DEFAULT_CTX = 512
MIN_CTX = 16
MIN_KLD_TOKENS = 100  # llama-perplexity prints no KL statistics below this many scored tokens

T = TypeVar("T")

_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|-?inf))"
_PM = r"\s*(?:±|\+/-|\ufffd+|\?+)\s*"  # "±", or what is left of it after a lossy decode
_FINAL = re.compile(r"Final estimate: PPL = " + _NUM + r" \+/- " + _NUM)
_CHUNKS = re.compile(r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+)")
_STATS = {
    "ppl": re.compile(r"Mean PPL\(Q\)\s*:\s*" + _NUM + _PM + _NUM),
    "ppl_diff": re.compile(r"Mean PPL\(Q\)-PPL\(base\)\s*:\s*" + _NUM + _PM + _NUM),
    "kld": re.compile(r"Mean\s+KLD:\s*" + _NUM + _PM + _NUM),
    "kld_max": re.compile(r"Maximum KLD:\s*" + _NUM),
    "kld_p99": re.compile(r"99\.0%\s+KLD:\s*" + _NUM),
    "kld_median": re.compile(r"Median\s+KLD:\s*" + _NUM),
    "top1": re.compile(r"Same top p:\s*" + _NUM + _PM + _NUM + r"\s*%"),
}


@dataclass
class PerplexityResult:
    ppl: float
    ppl_err: float
    chunks: int
    ctx: int


@dataclass
class KLDResult:
    ppl: float
    ppl_err: float
    kld_mean: float
    kld_err: float
    top1_agreement: float  # fraction, 0..1
    top1_err: float
    chunks: int
    ctx: int
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    delta_ppl: float | None = None  # PPL(Q) - PPL(base) on the same tokens, paired
    delta_ppl_err: float | None = None  # its standard error (llama-perplexity's, per token)


@dataclass(frozen=True)
class Plan:
    ctx: int
    chunks: int
    n_tokens: int | None

    @property
    def scored_tokens(self) -> int:
        """Tokens that count towards perplexity/KLD: the second half of each chunk but the last."""
        return self.chunks * (self.ctx - 1 - self.ctx // 2)

    def base_file_bytes(self, n_vocab: int) -> int:
        """Size of the ``--kl-divergence-base`` file llama-perplexity writes."""
        per_token = (2 * ((n_vocab + 1) // 2) + 4) * 2
        return 20 + self.chunks * self.ctx * 4 + self.scored_tokens * per_token


def count_tokens(model: Path, corpus: Path) -> int | None:
    """Tokens in ``corpus`` as llama-perplexity counts them (BOS added); None without bindings."""
    from ggufkit.core.errors import ToolMissingError
    from ggufkit.llamacpp.bindings import load_llama_cpp

    try:
        llama_cpp = load_llama_cpp()
    except ToolMissingError as exc:
        log.debug("cannot count corpus tokens ahead: %s", exc)
        return None
    quiet_llama_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    handle = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not handle:
        raise EvaluationError(
            f"llama.cpp cannot load {model}", hint="check it with ggufkit inspect"
        )
    try:
        vocab = llama_cpp.llama_model_get_vocab(handle)
        text = corpus.read_bytes()
        # With no room for tokens, llama_tokenize returns minus the number it needs.
        return abs(int(llama_cpp.llama_tokenize(vocab, text, len(text), None, 0, True, False)))
    finally:
        llama_cpp.llama_model_free(handle)


def quiet_llama_logs() -> None:
    """Keep llama.cpp's load-time chatter (routed by llama-cpp-python) off stderr unless -vv."""
    if not get_logger("ggufkit").isEnabledFor(logging.DEBUG):
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def plan(
    n_tokens: int | None,
    *,
    ctx: int | None,
    chunks: int | None,
    n_ctx_train: int | None,
    kld: bool,
    corpus: Path,
) -> Plan:
    """Choose the context and chunk count; lower a default ``ctx`` to fit a short corpus.

    llama-perplexity needs ``2 * ctx`` tokens and uses ``tokens // ctx`` chunks at most; KL
    statistics need at least :data:`MIN_KLD_TOKENS` scored tokens.
    """
    explicit = ctx is not None
    chosen = ctx if ctx is not None else min(DEFAULT_CTX, n_ctx_train or DEFAULT_CTX)
    if chunks is not None and chunks < 1:
        raise UsageError("--chunks must be at least 1")
    if n_tokens is None:
        return Plan(chosen, chunks or 0, None)
    if n_tokens < 2 * chosen:
        largest = (n_tokens // 2) // 16 * 16
        if explicit or largest < MIN_CTX:
            raise UsageError(
                f"the corpus {corpus} has {n_tokens} tokens; a context of {chosen} needs "
                f"at least {2 * chosen}",
                hint=f"use --ctx {largest} or less, or a longer --corpus"
                if largest >= MIN_CTX
                else "give a longer --corpus",
            )
        log.warning(
            "the corpus has only %d tokens: lowering the context from %d to %d",
            n_tokens,
            chosen,
            largest,
        )
        chosen = largest
    available = n_tokens // chosen
    if chunks is not None and chunks > available:
        log.warning("the corpus holds %d chunks of %d tokens, not %d", available, chosen, chunks)
    result = Plan(chosen, min(chunks or available, available), n_tokens)
    if kld and result.scored_tokens < MIN_KLD_TOKENS:
        need = -(-MIN_KLD_TOKENS // (chosen - 1 - chosen // 2))
        raise UsageError(
            f"{result.chunks} chunks of {chosen} tokens score only {result.scored_tokens} tokens; "
            f"KL-divergence needs at least {MIN_KLD_TOKENS}",
            hint=f"use --chunks {need} or more"
            if need <= available
            else "give a longer --corpus or a larger --ctx",
        )
    return result


def _num(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise EvaluationError(
            f"llama-perplexity reported {text}: the model produces invalid logits",
            hint="re-create the GGUF (ggufkit verify checks it against the checkpoint)",
        )
    return value


def _header(text: str) -> tuple[int, int] | None:
    match = _CHUNKS.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_perplexity(text: str) -> PerplexityResult | None:
    """The final estimate of a perplexity run; None when the output lacks it."""
    header = _header(text)
    if header is None:
        return None
    chunks, ctx = header
    final = _FINAL.search(text)
    if final:
        return PerplexityResult(_num(final.group(1)), _num(final.group(2)), chunks, ctx)
    return None


def parse_kld(text: str) -> KLDResult | None:
    """The statistics of a ``--kl-divergence`` run; None when the output lacks them."""
    header = _header(text)
    if header is None:
        return None
    chunks, ctx = header
    found = {key: pattern.search(text) for key, pattern in _STATS.items()}
    ppl, kld, top1 = found["ppl"], found["kld"], found["top1"]
    if ppl and kld and top1:

        def optional(key: str) -> float | None:
            match = found[key]
            return _num(match.group(1)) if match else None

        return KLDResult(
            ppl=_num(ppl.group(1)),
            ppl_err=_num(ppl.group(2)),
            kld_mean=_num(kld.group(1)),
            kld_err=_num(kld.group(2)),
            top1_agreement=_num(top1.group(1)) / 100,
            top1_err=_num(top1.group(2)) / 100,
            chunks=chunks,
            ctx=ctx,
            kld_median=optional("kld_median"),
            kld_p99=optional("kld_p99"),
            kld_max=optional("kld_max"),
            delta_ppl=optional("ppl_diff"),
            delta_ppl_err=_num(diff.group(2)) if (diff := found["ppl_diff"]) else None,
        )
    return None


def _tail(result: ToolResult, lines: int = 12) -> str:
    return "\n".join("    " + line for line in result.stdout.rstrip().splitlines()[-lines:])


def _check_known_failures(result: ToolResult, corpus: Path | None) -> None:
    short = short_corpus_error(
        result.stdout,
        corpus,
        tool="llama-perplexity",
        hint="lower --ctx or give a longer --corpus",
    )
    if short is not None:
        raise short
    if "inconsistent vocabulary" in result.stdout:
        raise UsageError(
            "the model and the baseline have different vocabularies",
            hint="compare quantizations of the same model only",
        )


def _run_parsed(
    args: list[str], parse: Callable[[str], T | None], *, what: str, corpus: Path | None
) -> T:
    result = run_tool(
        args, what=what, merge_stderr=True, hint="read the log; `ggufkit inspect` checks the file"
    )
    parsed = parse(result.stdout)
    if parsed is not None:
        return parsed
    _check_known_failures(result, corpus)
    raise EvaluationError(
        f"could not read the results of {what} from its output\n  last output:\n{_tail(result)}\n"
        f"  full log: {result.log_path}",
        hint="run it again with -v; if it keeps failing, report the log",
    )


def _common_args(model: Path, ctx: int, threads: int | None, lora: Path | None = None) -> list[str]:
    args = [str(find_tool("llama-perplexity")), "-m", str(model), "-c", str(ctx), *ngl_args()]
    args += fa_args()  # the in-process scorer (chunkeval) uses the same setting
    if threads:
        args += ["-t", str(threads)]
    if lora is not None:  # checked against the model by the caller (formats.gguf_lora)
        args += ["--lora", str(lora)]
    return args


def perplexity(
    model: Path,
    corpus: Path,
    *,
    ctx: int,
    chunks: int | None = None,
    threads: int | None = None,
    save_base: Path | None = None,
    lora: Path | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``corpus``; ``save_base`` also writes the KL-divergence base file;
    ``lora``: a LoRA GGUF applied at run time."""
    args = [*_common_args(model, ctx, threads, lora), "-f", str(corpus)]
    if chunks:
        args += ["--chunks", str(chunks)]
    if save_base is not None:
        args += ["--kl-divergence-base", str(save_base)]
    return _run_parsed(
        args, parse_perplexity, what=f"llama-perplexity on {model.name}", corpus=corpus
    )


def kl_divergence(
    model: Path,
    base_file: Path,
    *,
    ctx: int,
    threads: int | None = None,
    lora: Path | None = None,
) -> KLDResult:
    """Perplexity, KL-divergence and top-token agreement of ``model`` against a saved baseline."""
    args = [
        *_common_args(model, ctx, threads, lora),
        "--kl-divergence-base",
        str(base_file),
        "--kl-divergence",
    ]
    return _run_parsed(
        args, parse_kld, what=f"llama-perplexity --kl-divergence on {model.name}", corpus=None
    )
