"""The build's self-test: the embedded tiny-llama through every llama.cpp code path ggufkit uses.

A build that compiles is not a build that runs: at the pinned commit, ggml-cpu's AMX kernels
compile on an AMX CPU and then crash on every q8_0 and q4_0 model. So after each build (and on
``ggufkit doctor``) the embedded tiny-llama is converted, quantized to q8_0, q4_0 and q4_k_m with
the built ``llama-quantize``, scored with the built ``llama-perplexity`` on a few chunks, and one
file is loaded and run through ``llama-cpp-python`` in a child process, and ``llama-mtmd-cli``
reads a picture with the f16 file and a projector written for it (``probe_mtmd``, below), all with at
least two threads (the AMX fault is per thread). The result is stored in the build stamp, so a cached build
costs nothing; a build that failed it is refused by ``current_build()``.

It uses the converter, the quantizer, ``evaluate``'s perplexity and ``inference``'s model loader,
so it sits above them (``llamacpp/`` must not import the pipeline); ``build``, ``doctor`` and the
batch nodes call it.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import BuildError, GGUFKitError, ToolCrashedError
from ggufkit.core.log import get_logger
from ggufkit.llamacpp import build as llama_build
from ggufkit.llamacpp.build import BuildInfo
from ggufkit.llamacpp.layout import BuildOptions

log = get_logger("selftest")

MODEL = "tiny-llama"
TYPES = ("q8_0", "q4_0", "q4_k_m")
CTX = 128
CHUNKS = 2
PROBE_TOKENS = 32
# A working kernel scores the trained tiny-llama near 64 (README); a random model near the
# vocabulary size (2048). Far above this bound, the kernel computes nonsense without crashing.
MAX_SANE_PPL = 500.0


@dataclass
class SelfTestResult:
    ok: bool
    threads: int
    seconds: float = 0.0
    perplexity: dict[str, float] = field(default_factory=dict)  # type -> PPL
    bindings: str = "not run"  # "ok", "skipped (…)" or the failure
    mtmd: str = "not run"  # llama-mtmd-cli reading a picture: "ok (…)" (selftest_mtmd)
    step: str | None = None  # what failed
    signal: str | None = None
    error: str | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED at {self.step}: {self.error}"
        scores = ", ".join(f"{name} {value:.1f}" for name, value in self.perplexity.items())
        return (
            f"passed in {self.seconds:.1f} s with {self.threads} threads "
            f"(perplexity {scores}; bindings {self.bindings}; mtmd {self.mtmd})"
        )


def _probe_bindings(model: str, threads: int, n_tokens: int) -> list[int]:
    """In the child: load ``model`` with llama-cpp-python and evaluate a few tokens."""
    from ggufkit.inference.parity import open_gguf

    with open_gguf(model, n_ctx=64, n_threads=threads) as llm:
        ids = llm.tokenize(b"Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace")
        ids = (ids * n_tokens)[:n_tokens]
        llm.eval(ids)
        scores = llm.scores[: len(ids)]
        if not all(math.isfinite(float(v)) for row in scores for v in row[:8]):
            raise BuildError(f"llama-cpp-python computed non-finite logits on {model}")
        return [int(row.argmax()) for row in scores]


def _remedy(options: dict[str, object] | None) -> str:
    if options and options.get("amx"):
        return "rebuild without --amx: `ggufkit build --force` (the AMX kernels crash at this pin)"
    return "rebuild with `ggufkit build --portable`, or report the log"


def run_selftest(
    info: BuildInfo, *, threads: int | None = None, bindings: bool = True
) -> SelfTestResult:
    """Test ``info`` (the current build) end to end; never raises for a failing build."""
    from ggufkit.convert import convert
    from ggufkit.data import default_corpus, embedded_model
    from ggufkit.evaluate.ppl import perplexity
    from ggufkit.llamacpp.isolate import run_isolated
    from ggufkit.quantize import quantize

    threads = max(2, threads or os.cpu_count() or 2)
    result = SelfTestResult(ok=False, threads=threads)
    started = time.perf_counter()
    step = f"converting the embedded {MODEL}"
    try:
        with tempfile.TemporaryDirectory(prefix="ggufkit-selftest-") as tmp:
            f16 = Path(tmp) / f"{MODEL}-F16.gguf"
            convert(embedded_model(MODEL), f16, outtype="f16", engine="native")
            step = "llama-quantize " + ", ".join(TYPES)
            quantized = quantize(f16, list(TYPES), outdir=tmp)
            for item in quantized:
                step = f"llama-perplexity on {item.type}"
                score = perplexity(
                    item.output, default_corpus(), ctx=CTX, chunks=CHUNKS, threads=threads
                )
                if not score.ppl < MAX_SANE_PPL:
                    raise BuildError(
                        f"{item.type} scores perplexity {score.ppl:.1f} (a working build: under "
                        f"{MAX_SANE_PPL:.0f}); the CPU kernels compute wrong results"
                    )
                result.perplexity[item.type] = round(score.ppl, 3)
            if bindings:
                probe = next(item for item in quantized if item.type.lower() == "q4_0")
                step = f"llama-cpp-python running {probe.type}"
                run_isolated(
                    _probe_bindings,
                    str(probe.output),
                    threads,
                    PROBE_TOKENS,
                    what=f"llama-cpp-python on {probe.type}",
                )
                result.bindings = "ok"
            else:
                result.bindings = "skipped (--no-bindings)"
            step = "llama-mtmd-cli reading a picture (libmtmd)"
            result.mtmd = probe_mtmd(f16, Path(tmp), threads)
    except ToolCrashedError as exc:
        result.signal, result.error = exc.signal_name, exc.message
        result.hint = _remedy(info.options)
    except GGUFKitError as exc:
        result.error, result.hint = exc.message, exc.hint or _remedy(info.options)
    else:
        result.ok = True
    result.step = None if result.ok else step
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def ensure_selftest(
    info: BuildInfo, *, threads: int | None = None, bindings: bool = True, force: bool = False
) -> SelfTestResult:
    """The stored self-test of ``info``, or run it now and store it; raises when it fails."""
    if info.selftest is not None and not force:
        stored = SelfTestResult(**info.selftest)  # type: ignore[arg-type]
    else:
        log.info("self-testing the llama.cpp build %s (the embedded %s)", info.key, MODEL)
        stored = run_selftest(info, threads=threads, bindings=bindings)
        llama_build.record_selftest(info, stored.to_json())
        log.info("self-test %s", stored.summary())
    if not stored.ok:
        raise BuildError(
            f"the llama.cpp build {info.key} failed its self-test: {stored.step}: {stored.error}",
            hint=stored.hint,
        )
    return stored


def build_and_test(
    options: BuildOptions | None = None,
    *,
    jobs: int | None = None,
    force: bool = False,
    bindings: bool = True,
    selftest: bool = True,
) -> tuple[BuildInfo, SelfTestResult | None]:
    """``ggufkit build``: build (or reuse) the pinned llama.cpp, then make sure it runs here."""
    info = llama_build.build(options, jobs=jobs, force=force, bindings=bindings)
    if not selftest:
        return info, None
    return info, ensure_selftest(info, bindings=bindings, force=force)


# --- llama.cpp's multimodal library -------------------------------------------------------------
# The build's self-test of llama.cpp's multimodal library: ``llama-mtmd-cli`` reads a picture.
#
# A vision-language checkpoint converts only through the pinned upstream converter, which needs
# torch, and the self-test runs where torch may not be. So the projector is written here with
# gguf-py, in the smallest shape llama.cpp's ``clip`` loader takes: a LLaVA-style ``mlp`` projector
# (``clip.projector_type = "mlp"``) over a two-block ViT on 32x32 pictures in 8x8 patches, seeded
# random weights, its output as wide as the language model's embeddings. The language model is the
# embedded tiny-llama the self-test has already converted. ``llama-mtmd-cli`` then loads the pair,
# encodes a picture (a PNG written here, by the standard library), and answers a question about it:
# the check is that the picture was encoded into the expected 16 image tokens and an answer came
# back, which exercises libmtmd's loader, image preprocessing, the vision graph and the batch of
# image embeddings in the language model.

IMAGE_SIZE, PATCH, WIDTH, FFN, BLOCKS, HEADS = 32, 8, 32, 64, 2, 2
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2
QUESTION = "What is in the picture?"


def write_projector(path: Path, text_width: int, *, seed: int = 0) -> Path:
    """A tiny LLaVA-style mmproj whose embeddings are ``text_width`` wide."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in {
        "image_size": IMAGE_SIZE, "patch_size": PATCH, "embedding_length": WIDTH,
        "feed_forward_length": FFN, "block_count": BLOCKS, "attention.head_count": HEADS,
        "projection_dim": text_width,
    }.items():  # fmt: skip
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    tensors = {
        "v.patch_embd.weight": weight(WIDTH, 3, PATCH, PATCH),
        "v.position_embd.weight": weight(N_PATCHES, WIDTH),
        "v.pre_ln.weight": ones(WIDTH),
        "v.pre_ln.bias": zeros(WIDTH),
    }
    for block in range(BLOCKS):
        name = f"v.blk.{block}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{name}.{part}.weight"] = weight(WIDTH, WIDTH)
            tensors[f"{name}.{part}.bias"] = zeros(WIDTH)
        for norm in ("ln1", "ln2"):
            tensors[f"{name}.{norm}.weight"] = ones(WIDTH)
            tensors[f"{name}.{norm}.bias"] = zeros(WIDTH)
        tensors[f"{name}.ffn_up.weight"] = weight(FFN, WIDTH)
        tensors[f"{name}.ffn_up.bias"] = zeros(FFN)
        tensors[f"{name}.ffn_down.weight"] = weight(WIDTH, FFN)
        tensors[f"{name}.ffn_down.bias"] = zeros(WIDTH)
    tensors["mm.0.weight"] = weight(text_width, WIDTH)
    tensors["mm.0.bias"] = zeros(text_width)
    tensors["mm.2.weight"] = weight(text_width, text_width)
    tensors["mm.2.bias"] = zeros(text_width)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_picture(path: Path, size: int = 48) -> Path:
    """A small RGB gradient as a PNG (zlib and struct only: no Pillow at build time)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (x * 5 % 256, y * 5 % 256, (x + y) % 256))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def probe_mtmd(model: Path, scratch: Path, threads: int) -> str:
    """``llama-mtmd-cli`` answers about a picture with ``model`` and a projector written here;
    returns what the self-test records. Raises BuildError (or the tool's error) when not."""
    from ggufkit.formats.gguf_reader import read_gguf
    from ggufkit.inference.image_chat import find_mtmd_cli
    from ggufkit.llamacpp.runner import run_tool

    meta = read_gguf(model, max_array_items=0).metadata
    width = meta.get(f"{meta.get('general.architecture')}.embedding_length")
    if not isinstance(width, int):
        raise BuildError(f"{model} records no embedding width")
    projector = write_projector(scratch / f"mmproj-{model.name}", width)
    picture = write_picture(scratch / "picture.png")
    args: list[str | Path] = [
        find_mtmd_cli(), "-m", model, "--mmproj", projector, "--image", picture,
        "-p", QUESTION, "-n", "8", "--temp", "0", "--chat-template", "chatml",
        "-t", str(threads), "-c", "256", "-v",
    ]  # fmt: skip
    done = run_tool(args, what="llama-mtmd-cli", hint="see the log: llama.cpp's own message")
    log = done.log_path.read_text(encoding="utf-8", errors="replace")
    tokens = re.search(r"encoding batch with \d+ entries and total (\d+) tokens", log)
    if tokens is None or int(tokens.group(1)) != N_PATCHES:
        found = tokens.group(1) if tokens else "none"
        raise BuildError(
            f"llama-mtmd-cli encoded the picture into {found} image tokens, not {N_PATCHES}",
            hint=f"see the log {done.log_path}",
        )
    # What the tiny model answers is its own (greedy; possibly end-of-text at once): the tool
    # must have encoded the picture and finished, not said something.
    return f"ok ({N_PATCHES} image tokens)"
