"""``ggufkit verify``: does a GGUF file tokenize and predict like the checkpoint it came from?

A thin layer over :mod:`ggufkit.inference.parity` (which does the comparing): choose the text, run
both checks, and judge them. Tokenization must be identical. For an unquantized file the logits must
agree within ``max_rel_diff`` of the largest reference logit and no confident top token may flip;
a quantized file is only judged when a limit is given, since rounding the weights moves logits by
design (see ``ggufkit eval`` for its KL-divergence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import UsageError
from ggufkit.evaluate.pipeline import default_corpus, n_ctx_train, type_label
from ggufkit.evaluate.ppl import quiet_llama_logs
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.inference.parity import ParityReport, TokenizerReport
from ggufkit.llamacpp.attention import resolved_flash_attn

DEFAULT_POSITIONS = 128
DEFAULT_TEXT_CHARS = 20_000
UNQUANTIZED_MAX_REL_DIFF = 0.01  # measured: tiny LLaMA f16, max |Δlogit| ~0.2% of max |logit|


@dataclass
class VerifyReport:
    gguf: str
    against: str
    type: str
    quantized: bool
    text_source: str
    tokenizer: TokenizerReport
    logits: ParityReport
    max_rel_diff: float | None  # None: logits reported, not judged
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # differences shown but not failed

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        t, lg = self.tokenizer, self.logits
        return {
            "gguf": self.gguf,
            "against": self.against,
            "type": self.type,
            "quantized": self.quantized,
            "text": self.text_source,
            "tokenizer": {
                "equal": t.equal,
                "n_reference": t.n_reference,
                "n_gguf": t.n_gguf,
                "first_mismatch": t.first_mismatch,
            },
            "logits": lg.to_json(),
            "max_rel_diff": self.max_rel_diff,
            "flash_attn": resolved_flash_attn(),
            "passed": self.passed,
            "problems": self.problems,
            "notes": self.notes,
        }

    def text(self) -> str:
        lines = [
            f"file:       {self.gguf} ({self.type})",
            f"against:    {self.against}",
            f"text:       {self.text_source}",
            f"tokenizer:  {self.tokenizer.summary()}",
            f"logits:     {self.logits.summary()} (flash attention {resolved_flash_attn()})",
        ]
        if self.max_rel_diff is None:
            lines.append(
                "            (quantized: reported, not judged; give --max-rel-diff to judge)"
            )
        else:
            lines.append(f"            limit: {100 * self.max_rel_diff:g}% of max |logit|")
        lines += [f"note:       {note}" for note in self.notes]
        lines.append("verdict:    " + ("PASS" if self.passed else "FAIL"))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def verify(
    gguf_path: str | Path,
    hf_dir: str | Path,
    *,
    text_file: str | Path | None = None,
    positions: int = DEFAULT_POSITIONS,
    max_rel_diff: float | None = None,
    lora: str | Path | None = None,
    adapter: str | Path | None = None,
) -> VerifyReport:
    """Compare ``gguf_path`` with the Hugging Face checkpoint in ``hf_dir``; ``lora``: a LoRA
    GGUF llama.cpp applies at run time; ``adapter``: the PEFT adapter directory the reference
    (PEFT in transformers) applies to ``hf_dir``."""
    from ggufkit.inference.parity import hf_token_ids, logit_parity, tokenizer_parity

    gguf_path, hf_dir = Path(gguf_path), Path(hf_dir)
    info = read_gguf(gguf_path, max_array_items=0)
    if not (hf_dir / "config.json").is_file():
        raise UsageError(
            f"{hf_dir} is not a Hugging Face model directory (no config.json)",
            hint="--against takes the checkpoint directory the GGUF was converted from",
        )
    if positions < 2:
        raise UsageError("--positions must be at least 2")
    source = Path(text_file) if text_file is not None else default_corpus()
    try:
        text = source.read_text(encoding="utf-8", errors="replace")[:DEFAULT_TEXT_CHARS]
    except OSError as exc:
        raise UsageError(f"cannot read the text {source}: {exc.strerror}", path=source) from exc
    if not text.strip():
        raise UsageError(f"the text {source} is empty", hint="give a text file with --text")

    quiet_llama_logs()
    tokens = tokenizer_parity(gguf_path, hf_dir, text)
    limit = min(positions, n_ctx_train(info) or positions)
    ids = hf_token_ids(hf_dir, text)[:limit]
    if lora is not None and adapter is None:
        raise UsageError(
            "--lora needs --against-adapter: the PEFT adapter the reference applies",
            hint="give the adapter directory the LoRA GGUF was converted from",
        )
    logits = logit_parity(gguf_path, hf_dir, ids, lora=lora, adapter=adapter)
    quantized = info.is_quantized
    judged = max_rel_diff if max_rel_diff is not None or quantized else UNQUANTIZED_MAX_REL_DIFF
    problems: list[str] = []
    notes: list[str] = []
    if not tokens.equal:
        body, note = _special_only(tokens, info.metadata)
        if body:
            notes.append(note)
        else:
            problems.append(f"tokenization {tokens.summary()}")
    if judged is not None:
        problems += logit_problems(logits, judged)
    return VerifyReport(
        gguf=str(gguf_path),
        against=str(hf_dir) + (f" + PEFT adapter {adapter}" if adapter is not None else ""),
        type=type_label(info),
        quantized=quantized,
        text_source=f"{source} ({len(text)} characters, {len(ids)} positions for logits)",
        tokenizer=tokens,
        logits=logits,
        max_rel_diff=judged,
        problems=problems,
        notes=notes,
    )


def logit_problems(logits: ParityReport, limit: float, where: str = "") -> list[str]:
    """What fails in ``logits`` at ``limit`` (a fraction of the largest reference logit): the
    largest difference, and top tokens that flip where the reference is confident."""
    problems = []
    if logits.rel_diff > limit:
        problems.append(
            f"{where}max |Δlogit| is {100 * logits.rel_diff:.3f}% of max |logit|, "
            f"above the {100 * limit:g}% limit"
        )
    flipped = logits.decisive_mismatches()
    if flipped:
        problems.append(
            f"{where}the top token flips at {len(flipped)} confident position(s): {flipped[:8]}"
        )
    return problems


def _special_only(tokens: TokenizerReport, metadata: dict[str, Any]) -> tuple[bool, str]:
    """Whether the two tokenizations differ only by an added BOS/EOS, and how."""
    bos, eos = (
        metadata.get("tokenizer.ggml.bos_token_id"),
        metadata.get("tokenizer.ggml.eos_token_id"),
    )

    def strip(ids: list[int]) -> tuple[list[int], bool, bool]:
        has_bos, has_eos = bool(ids) and ids[0] == bos, bool(ids) and ids[-1] == eos
        return ids[int(has_bos) : len(ids) - int(has_eos)], has_bos, has_eos

    ref, ref_bos, ref_eos = strip(tokens.reference_ids)
    got, got_bos, got_eos = strip(tokens.gguf_ids)
    if ref != got:
        return False, ""
    parts = [
        f"{name} is added by {'the GGUF' if g else 'the checkpoint tokenizer'} only"
        for name, r, g in (("BOS", ref_bos, got_bos), ("EOS", ref_eos, got_eos))
        if r != g
    ]
    return True, f"the texts tokenize identically ({len(ref)} tokens) but " + "; ".join(parts)
