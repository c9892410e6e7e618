"""merge-lora against PEFT's merge_and_unload(), in one run: time and peak RSS, ratios printed.

    .venv/bin/python benchmarks/bench_lora.py [--layers N] [--runs N] [--keep]

A random LLaMA (bf16 safetensors, ~135M parameters with the default 12 layers: hidden 768,
vocabulary 32000) and a random rank-16 LoRA on every linear layer of it (PEFT's file layout and
adapter_config.json) are generated with numpy once and cached under $GGUFKIT_HOME/bench/. Every
run is a fresh process that finds its inputs in the page cache; each step runs ``--runs`` times
and its fastest run counts. The anchor is what PEFT's users run: load the base with transformers
(bf16), ``PeftModel.from_pretrained``, ``merge_and_unload()``, ``save_pretrained``. The fused
``convert BASE --lora`` is timed beside them.

Target, held as the exit code: merge-lora's peak RSS at or under 2 x the largest tensor + 300 MB
(merge-delta's bound).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ggufkit.core import paths
from ggufkit.core.fsutil import atomic_dir
from ggufkit.formats.shards import TensorSpec, write_sharded

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import bench_delta  # noqa: E402  (its model writer, shapes and fresh-process runs)

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, RANK = 768, 2048, 12, 12, 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MB = 1024 * 1024

PEFT_MERGE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload().save_pretrained(sys.argv[3])
"""


def set_shape() -> None:
    bench_delta.HIDDEN, bench_delta.INTERMEDIATE = HIDDEN, INTERMEDIATE
    bench_delta.HEADS, bench_delta.KV_HEADS = HEADS, KV_HEADS


def generate_adapter(out: Path, layers: int) -> None:
    rng = np.random.default_rng(7)
    shapes = dict(bench_delta.llama_shapes(layers))
    specs, arrays = [], {}
    for i in range(layers):
        for module in TARGETS:
            kind = (
                "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            )
            name = f"model.layers.{i}.{kind}.{module}"
            n_out, n_in = shapes[name + ".weight"]
            for side, shape in (("A", (RANK, n_in)), ("B", (n_out, RANK))):
                key = f"base_model.model.{name}.lora_{side}.weight"
                arrays[key] = rng.standard_normal(shape, dtype=np.float32) * 0.01
                specs.append(TensorSpec(key, "F32", shape))
    with atomic_dir(out) as tmp:
        write_sharded(tmp, specs, lambda spec: arrays[spec.name], max_shard_bytes=10**12)
        (tmp / "model.safetensors").rename(tmp / "adapter_model.safetensors")
        config = {
            "peft_type": "LORA",
            "r": RANK,
            "lora_alpha": 32,
            "target_modules": list(TARGETS),
            "bias": "none",
            "fan_in_fan_out": False,
            "task_type": "CAUSAL_LM",
        }
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))


def ensure_inputs(layers: int) -> tuple[Path, Path]:
    import tiny

    set_shape()
    root = paths.home() / "bench" / f"lora-llama-{layers}l"
    base, adapter = root / "base", root / "adapter"
    if not (base / "config.json").exists() or not (adapter / "adapter_config.json").exists():
        print(f"generating the base and the adapter under {root} (once)...", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            spm = tiny.train_sentencepiece(Path(scratch))
            bench_delta.generate(base, layers, seed=1, std=0.02, shard_bytes=10**12, spm=spm)
        generate_adapter(adapter, layers)
    return base, adapter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="12 layers: 135M parameters")
    parser.add_argument("--runs", type=int, default=2, help="runs of each step; the best counts")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    base, adapter = ensure_inputs(args.layers)
    shapes = bench_delta.llama_shapes(args.layers)
    params = sum(int(np.prod(s)) for _, s in shapes)
    largest_mb = max(int(np.prod(s)) for _, s in shapes) * 2 / MB
    print(f"LLaMA {params / 1e6:.0f}M parameters, bf16; LoRA r={RANK} on {len(TARGETS)} modules")
    work = Path(tempfile.mkdtemp(prefix="bench-lora-", dir=paths.home() / "bench"))
    logs = work / "logs"
    logs.mkdir()
    script = work / "peft_merge.py"
    script.write_text(PEFT_MERGE)
    ggufkit = [sys.executable, "-m", "ggufkit", "-q"]
    ours_out, peft_out, fused_out = work / "m", work / "p", work / "f.gguf"
    try:
        merge = ["merge-lora", "--base", str(base), "--adapter", str(adapter), "-o", str(ours_out)]
        ours = bench_delta.run("ggufkit merge-lora", [*ggufkit, *merge], logs, ours_out, args.runs)
        peft_cmd = [sys.executable, str(script), str(base), str(adapter), str(peft_out)]
        peft = bench_delta.run("PEFT merge_and_unload", peft_cmd, logs, peft_out, args.runs)
        fused_cmd = [*ggufkit, "convert", str(base), "--lora", str(adapter), "-o", str(fused_out)]
        fused = bench_delta.run("ggufkit convert --lora", fused_cmd, logs, fused_out, args.runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(ours, peft, fused, largest_mb)


def report(
    ours: bench_delta.Run, peft: bench_delta.Run, fused: bench_delta.Run, largest_mb: float
) -> int:
    wall, rss = float(ours["wall"]), float(ours["rss_mb"])
    budget = 2 * largest_mb + 300
    met = ours["rc"] == 0 and rss <= budget
    print(
        f"\nmerge-lora peak RSS {rss:.0f} MB; target <= 2 x largest tensor + 300 MB = "
        f"{budget:.0f} MB: {'met' if met else 'MISSED'}"
    )
    if peft["rc"] == 0 and ours["rc"] == 0:
        p_wall, p_rss = float(peft["wall"]), float(peft["rss_mb"])
        print(
            f"  merge-lora vs PEFT merge_and_unload (same run, same inputs): {wall:.2f} s vs "
            f"{p_wall:.2f} s ({p_wall / wall:.2f}x faster), {rss:.0f} MB vs {p_rss:.0f} MB "
            f"({p_rss / rss:.1f}x less)"
        )
    else:
        print(f"  PEFT merge_and_unload failed: {peft.get('error')}")
    if fused["rc"] == 0:
        print(
            f"  convert --lora (merged straight into a GGUF): {float(fused['wall']):.2f} s, "
            f"{float(fused['rss_mb']):.0f} MB"
        )
    return 0 if met and all(r["rc"] == 0 for r in (ours, peft, fused)) else 1


if __name__ == "__main__":
    sys.exit(main())
