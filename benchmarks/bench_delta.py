"""merge-delta and convert --delta-base against their floor and their anchors, in one run.

    .venv/bin/python benchmarks/bench_delta.py [--layers N] [--keep]

A ~1B LLaMA base and a delta of the same shapes (bf16 safetensors, random, the two sharded
differently) are generated with numpy once and cached under $GGUFKIT_HOME/bench/. The floor
(benchmarks/floors.py) is that of reading base and delta and writing the merged bytes: the larger
of a page-cache copy of those bytes and torch's cast-and-add kernel on every core. Every run is a
fresh process (``floors.measure``) that finds its inputs in the page cache; each step runs twice
(``--runs``) and its fastest run counts, as the floor counts its fastest pass. The anchors run in the
same session: FastChat's ``python -m fastchat.model.apply_delta`` as its users run it (default
and --low-cpu-mem; ``fschat`` installed --no-deps) for merge-delta, and merge-delta followed by
convert for the fused ``convert --delta-base``.

Targets, held as the exit code: merge-delta and convert --delta-base within 1.5x of the floor,
and merge-delta's peak RSS at or under 2 x the largest tensor + 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import floors  # noqa: E402

TARGET = 1.5  # merge-delta and convert --delta-base: at most this many times their floor

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
MB = 1024 * 1024  # RSS and tensor sizes in MiB, as getrusage gives them


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


Run = dict[str, float | str]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run(name: str, command: list[str], logs: Path, output: Path, runs: int) -> Run:
    """The fastest of ``runs`` runs (the output removed before each), as the floor is the
    fastest of its passes; the last run's output is left in place."""
    best: Run | None = None
    for attempt in range(1, runs + 1):
        _remove(output)
        log = logs / f"{name.replace(' ', '_')}.{attempt}.log"
        result: Run = dict(floors.measure(command, log))
        if result["rc"] != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            result["error"] = lines[-1] if lines else "(no output)"
        status = "ok" if result["rc"] == 0 else f"FAILED: {result.get('error')}"
        print(
            f"  {name:<30} {result['wall']:7.2f} s {result['rss_mb']:7.0f} MB  "
            f"(CPU user {result['user']:5.2f} s, sys {result['sys']:5.2f} s)  {status}",
            flush=True,
        )
        if result["rc"] != 0:
            return result
        if best is None or float(result["wall"]) < float(best["wall"]):
            best = result
    assert best is not None
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="20 layers: 1.01B parameters")
    parser.add_argument("--runs", type=int, default=2, help="runs of each step; the best counts")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    base, delta = ensure_models(args.layers)
    shapes = llama_shapes(args.layers)
    params = sum(int(np.prod(s)) for _, s in shapes)
    largest_mb = max(int(np.prod(s)) for _, s in shapes) * 2 / MB
    inputs = sorted(base.glob("*.safetensors")) + sorted(delta.glob("*.safetensors"))
    output_bytes = params * 2  # the merged model in f16, in a checkpoint or a GGUF alike
    print(f"LLaMA {params / 1e9:.2f}B parameters, bf16; largest tensor {largest_mb:.0f} MB")
    work = Path(tempfile.mkdtemp(prefix="bench-delta-", dir=paths.home() / "bench"))
    floor = floors.measure_floor(inputs, output_bytes, work, "merge-bf16")
    print(f"  {floor.describe()}")
    ggufkit = [sys.executable, "-m", "ggufkit", "-q"]
    fastchat = [sys.executable, "-m", "fastchat.model.apply_delta"]
    fc_args = ["--base-model-path", str(base), "--delta-path", str(delta)]
    merged, fused_out, two_out, fc_out = (work / n for n in ("m", "f.gguf", "t.gguf", "fc"))
    logs = work / "logs"
    logs.mkdir()
    try:
        imports = "import ggufkit.cli.merge_delta, ggufkit.delta.merge"
        start = run("process start + imports", [sys.executable, "-c", imports], logs, work / "x", 1)
        merge = ["merge-delta", "--base", str(base), "--delta", str(delta), "-o", str(merged)]
        ours = run("ggufkit merge-delta", [*ggufkit, *merge], logs, merged, args.runs)
        two_step = run(
            "ggufkit convert (merged)",
            [*ggufkit, "convert", str(merged), "-o", str(two_out)],
            logs,
            two_out,
            args.runs,
        )
        for path in (merged, two_out):
            _remove(path)
        fused = run(
            "ggufkit convert --delta-base",
            [*ggufkit, "convert", str(delta), "--delta-base", str(base), "-o", str(fused_out)],
            logs,
            fused_out,
            args.runs,
        )
        _remove(fused_out)
        target = ["--target-model-path", str(fc_out)]
        fc = run("fastchat apply_delta", [*fastchat, *fc_args, *target], logs, fc_out, args.runs)
        low = [*fastchat, *fc_args, *target, "--low-cpu-mem"]
        fc_low = run("fastchat --low-cpu-mem", low, logs, fc_out, args.runs)
        _remove(fc_out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(floor, start, ours, fused, two_step, fc, fc_low, largest_mb)


def report(
    floor: floors.Floor,
    start: Run,
    ours: Run,
    fused: Run,
    two_step: Run,
    fc: Run,
    fc_low: Run,
    largest_mb: float,
) -> int:
    """Print the ratios; 0 when every run succeeded and every target is met."""
    wall, rss = float(ours["wall"]), float(ours["rss_mb"])
    print(f"\n{floor.describe()}")
    print(f"  of which process start and imports: {float(start['wall']):.2f} s per run")
    print(
        "  where merge-delta's time goes: CPU user = the bf16 + bf16 -> f16 kernel (numpy, "
        f"{float(ours['user']):.2f} s), sys = page-cache reads and writes "
        f"({float(ours['sys']):.2f} s), shared by {os.cpu_count()} cores"
    )
    met = [
        ours["rc"] == 0 and floors.verdict("merge-delta", wall, floor, TARGET),
        fused["rc"] == 0
        and floors.verdict("convert --delta-base", float(fused["wall"]), floor, TARGET),
    ]
    budget = 2 * largest_mb + 300
    met.append(ours["rc"] == 0 and rss <= budget)
    print(
        f"merge-delta peak RSS {rss:.0f} MB; target <= 2 x largest tensor + 300 MB = "
        f"{budget:.0f} MB: {'met' if met[-1] else 'MISSED'}"
    )
    print("\nanchors (same run, same inputs):")
    for label, anchor in (("FastChat apply_delta", fc), ("FastChat --low-cpu-mem", fc_low)):
        if anchor["rc"] == 0:
            a_wall, a_rss = float(anchor["wall"]), float(anchor["rss_mb"])
            print(
                f"  merge-delta vs {label}: {wall:.2f} s vs {a_wall:.2f} s ({a_wall / wall:.2f}x "
                f"faster), {rss:.0f} MB vs {a_rss:.0f} MB ({a_rss / rss:.1f}x less)"
            )
        else:
            print(f"  {label} cannot merge this safetensors checkpoint: {anchor.get('error')}")
    if fused["rc"] == 0 and two_step["rc"] == 0:
        then = wall + float(two_step["wall"])
        print(
            f"  convert --delta-base vs merge-delta + convert: {float(fused['wall']):.2f} s vs "
            f"{wall:.2f} + {float(two_step['wall']):.2f} = {then:.2f} s "
            f"({then / float(fused['wall']):.2f}x faster); peak RSS {float(fused['rss_mb']):.0f} MB "
            f"vs {max(rss, float(two_step['rss_mb'])):.0f} MB, no merged checkpoint on disk"
        )
    ok = all(r["rc"] == 0 for r in (ours, fused, two_step)) and all(met)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
