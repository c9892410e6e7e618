"""merge-delta against FastChat's apply_delta, and convert --delta-base against merge-then-convert.

    .venv/bin/python benchmarks/bench_delta.py [--layers N] [--keep]

A ~1B LLaMA base and a delta of the same shapes (bf16 safetensors, random, the two sharded
differently) are generated with numpy once and cached under $GGUFKIT_HOME/bench/. Every run is
a fresh process started by a fresh wrapper, whose getrusage(RUSAGE_CHILDREN) gives the peak RSS
of that run alone. FastChat (``fschat``, installed --no-deps) runs as its users run it:
``python -m fastchat.model.apply_delta``, in its default and its --low-cpu-mem mode. The input
files are read once beforehand so that every run finds them in the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ggufkit.core import paths
from ggufkit.core.fsutil import atomic_dir
from ggufkit.formats.safetensors import float32_to_bf16
from ggufkit.formats.shards import TensorSpec, write_sharded

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
MB = 1024 * 1024

# Runs a command with its output in a log file and reports its wall time and peak RSS.
WRAPPER = """
import json, resource, subprocess, sys, time
with open(sys.argv[1], "w") as log:
    started = time.perf_counter()
    rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "rss_mb": usage.ru_maxrss / 1024}))
"""


def llama_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    kv = HIDDEN // HEADS * KV_HEADS
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.v_proj.weight", (kv, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return [*shapes, ("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def config(layers: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def generate(out: Path, layers: int, *, seed: int, std: float, shard_bytes: int, spm: Path) -> None:
    rng = np.random.default_rng(seed)

    def produce(spec: TensorSpec) -> np.ndarray:
        if len(spec.shape) == 1:
            return float32_to_bf16(1.0 + rng.standard_normal(spec.shape, dtype=np.float32) * std)
        return float32_to_bf16(rng.standard_normal(spec.shape, dtype=np.float32) * std)

    with atomic_dir(out) as tmp:
        specs = [TensorSpec(name, "BF16", shape) for name, shape in llama_shapes(layers)]
        write_sharded(tmp, specs, produce, max_shard_bytes=shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config(layers), indent=2))
        shutil.copy(spm, tmp / "tokenizer.model")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False})
        )


def ensure_models(layers: int) -> tuple[Path, Path]:
    import tiny

    root = paths.home() / "bench" / f"delta-llama-{layers}l"
    base, delta = root / "base", root / "delta"
    if not (base / "config.json").exists() or not (delta / "config.json").exists():
        print(f"generating the models under {root} (once)...", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            spm = tiny.train_sentencepiece(Path(scratch))
            generate(base, layers, seed=1, std=0.02, shard_bytes=1_000_000_000, spm=spm)
            generate(delta, layers, seed=2, std=0.002, shard_bytes=700_000_000, spm=spm)
    return base, delta


def measure(name: str, command: list[str], logs: Path) -> dict[str, float | int | str]:
    log = logs / f"{name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GGUFKIT_NO_PROGRESS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(log), *command],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, float | int | str] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        result["error"] = lines[-1] if lines else "(no output)"
    status = "ok" if result["rc"] == 0 else f"FAILED: {result.get('error')}"
    print(f"  {name:<28} {result['wall']:7.1f} s  {result['rss_mb']:7.0f} MB  {status}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="20 layers: 1.01B parameters")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    base, delta = ensure_models(args.layers)
    shapes = llama_shapes(args.layers)
    params = sum(int(np.prod(s)) for _, s in shapes)
    largest_mb = max(int(np.prod(s)) for _, s in shapes) * 2 / MB
    for file in [*base.glob("*.safetensors"), *delta.glob("*.safetensors")]:
        with open(file, "rb") as handle:  # into the page cache, for every run alike
            while handle.read(64 * MB):
                pass
    print(f"LLaMA {params / 1e9:.2f}B parameters, bf16; largest tensor {largest_mb:.0f} MB")
    ggufkit = [sys.executable, "-m", "ggufkit", "-q"]
    fastchat = [sys.executable, "-m", "fastchat.model.apply_delta"]
    work = Path(tempfile.mkdtemp(prefix="bench-delta-", dir=paths.home() / "bench"))
    logs = work / "logs"
    logs.mkdir()
    try:
        merged = str(work / "merged")
        ours = measure(
            "ggufkit merge-delta",
            [*ggufkit, "merge-delta", "--base", str(base), "--delta", str(delta), "-o", merged],
            logs,
        )
        fc_args = ["--base-model-path", str(base), "--delta-path", str(delta)]
        fc = measure(
            "fastchat apply_delta",
            [*fastchat, *fc_args, "--target-model-path", str(work / "fc")],
            logs,
        )
        shutil.rmtree(work / "fc", ignore_errors=True)
        fc_low = measure(
            "fastchat --low-cpu-mem",
            [*fastchat, *fc_args, "--target-model-path", str(work / "fc-low"), "--low-cpu-mem"],
            logs,
        )
        shutil.rmtree(work / "fc-low", ignore_errors=True)
        two_step = measure(
            "ggufkit convert (merged)",
            [*ggufkit, "convert", str(work / "merged"), "-o", str(work / "two-step.gguf")],
            logs,
        )
        fused_out = str(work / "fused.gguf")
        fused = measure(
            "ggufkit convert --delta-base",
            [*ggufkit, "convert", str(delta), "--delta-base", str(base), "-o", fused_out],
            logs,
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(ours, fc, fc_low, two_step, fused, largest_mb)
    return 0 if ours["rc"] == 0 and fused["rc"] == 0 and two_step["rc"] == 0 else 1


def report(
    ours: dict[str, float | int | str],
    fc: dict[str, float | int | str],
    fc_low: dict[str, float | int | str],
    two_step: dict[str, float | int | str],
    fused: dict[str, float | int | str],
    largest_mb: float,
) -> None:
    rss, wall = float(ours["rss_mb"]), float(ours["wall"])
    budget = 2 * largest_mb + 300
    print("\nmerge-delta vs FastChat apply_delta (same run, same inputs):")
    if fc["rc"] == 0:
        print(
            f"  wall: {wall:.1f} s vs {float(fc['wall']):.1f} s  ({float(fc['wall']) / wall:.2f}x faster)"
        )
        print(
            f"  peak RSS: {rss:.0f} MB vs {float(fc['rss_mb']):.0f} MB  ({float(fc['rss_mb']) / rss:.1f}x less)"
        )
    else:
        print(f"  FastChat default mode failed: {fc.get('error')}")
    if fc_low["rc"] == 0:
        ratio = float(fc_low["rss_mb"]) / rss
        print(f"  vs --low-cpu-mem: {float(fc_low['rss_mb']):.0f} MB ({ratio:.1f}x; target >= 4x)")
    else:
        print(
            f"  FastChat --low-cpu-mem cannot merge this safetensors checkpoint: {fc_low.get('error')}"
        )
    verdict = "met" if rss <= budget else "MISSED"
    print(f"  RSS target 2 x largest tensor + 300 MB = {budget:.0f} MB: {verdict} ({rss:.0f} MB)")
    merged_then = wall + float(two_step["wall"])
    print("\nconvert --delta-base vs merge-delta then convert:")
    print(
        f"  wall: {float(fused['wall']):.1f} s vs {wall:.1f} + {float(two_step['wall']):.1f} = "
        f"{merged_then:.1f} s  ({merged_then / float(fused['wall']):.2f}x faster)"
    )
    print(
        f"  peak RSS: {float(fused['rss_mb']):.0f} MB vs "
        f"{max(rss, float(two_step['rss_mb'])):.0f} MB; no merged checkpoint on disk"
    )


if __name__ == "__main__":
    sys.exit(main())
