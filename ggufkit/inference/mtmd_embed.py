"""What llama.cpp makes of a picture: its image embeddings through libmtmd, and the language
model's logits for the text after the image.

The work runs in a spawned child (:func:`mtmd_side`): libmtmd aborts the process on input it does
not expect, and that must fail one call, not ggufkit. The child loads the language model through
llama-cpp-python (on ggufkit's build), opens the mmproj with ``mtmd_init_from_file``, lays out the
prompt with ``mtmd_tokenize`` (the media marker where the picture goes), encodes every image chunk
(``mtmd_encode_chunk``) and copies ``mtmd_get_output_embd``; then it decodes the prompt, image
embeddings included, and keeps the logits of every text token after the last image.

Image positions: ``native`` decodes the image chunks as llama.cpp does in ``llama-mtmd-cli``
(``mtmd_helper_decode_image_chunk``: 2-D M-RoPE positions where the model uses them); ``linear``
gives every image token its own position, the same in every rotary section, as transformers'
MiniCPM-V does (so its logits after the image can be compared at all).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from ggufkit.core.errors import EvaluationError

Positions = Literal["native", "linear"]
MROPE_SECTIONS = 4  # llama.cpp's positions per embedding for M-RoPE models
VERIFY_CTX, VERIFY_BATCH = 8192, 512  # the context (image tokens and text) and its batches


@dataclass
class MtmdChunk:
    kind: Literal["text", "image"]
    tokens: list[int] = field(default_factory=list)  # text: the ids; image: empty
    n_tokens: int = 0
    n_pos: int = 0  # positions the chunk advances (M-RoPE images: fewer than its tokens)
    nx: int = 0  # image: llama.cpp's token grid, when it reports one
    ny: int = 0


@dataclass
class MtmdResult:
    chunks: list[MtmdChunk]
    embeddings: np.ndarray  # (image tokens over all image chunks, n_embd), in prompt order
    logits: np.ndarray  # (text tokens after the last image, n_vocab)
    mrope: bool  # llama.cpp decodes the image on M-RoPE positions
    non_causal: bool  # llama.cpp attends to the image tokens bidirectionally


def load_mtmd() -> tuple[ModuleType, ModuleType]:
    """``llama_cpp`` on ggufkit's build and its ``mtmd_cpp`` on the build's libmtmd, with mtmd's
    log routed where llama.cpp's goes."""
    from ggufkit.llamacpp.bindings import load_llama_cpp, log_callback
    from ggufkit.llamacpp.build import current_build

    llama_cpp = load_llama_cpp()
    os.environ["MTMD_CPP_LIB"] = str(current_build().lib_dir)
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # the library missing or unloadable
        from ggufkit.core.errors import ToolMissingError

        raise ToolMissingError(
            f"libmtmd cannot be loaded from ggufkit's llama.cpp build: {exc}",
            hint="`ggufkit build` builds it with the other tools",
        ) from exc
    mtmd_cpp.mtmd_helper_log_set(log_callback(llama_cpp), ctypes.c_void_p(0))  # mtmd_log_set too
    return llama_cpp, mtmd_cpp


def _failed(message: str) -> EvaluationError:
    """An error from inside llama.cpp's work, pointing at its log (where llama.cpp says why)."""
    from ggufkit.llamacpp.bindings import llama_log_path

    log = llama_log_path()
    return EvaluationError(
        message,
        hint="check that the mmproj was converted with this model (its projector type fits the "
        "model's architecture)" + (f"; llama.cpp's log: {log}" if log else ""),
    )


def _decode(
    lib: ModuleType,
    llm: Any,
    *,
    tokens: list[int] | None = None,
    embd: np.ndarray | None = None,
    pos: np.ndarray,
    want_logits: bool,
) -> list[np.ndarray]:
    """llama_decode of ``tokens`` or of ``embd`` rows at ``pos`` (sections x n: one row for
    tokens, ``MROPE_SECTIONS`` for embeddings of an M-RoPE model), ``n_batch`` at a time; the
    logits of every row when asked."""
    n = len(tokens) if tokens is not None else int(embd.shape[0])  # type: ignore[union-attr]
    n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(llm.model)))
    logits: list[np.ndarray] = []
    for start in range(0, n, llm.n_batch):
        stop = min(n, start + llm.n_batch)
        size = stop - start
        batch = lib.llama_batch()
        batch.n_tokens = size
        if tokens is not None:
            ids = (lib.llama_token * size)(*tokens[start:stop])
            batch.token = ids
        else:
            rows = np.ascontiguousarray(embd[start:stop], dtype=np.float32)  # type: ignore[index]
            batch.embd = rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        positions = np.ascontiguousarray(pos[:, start:stop].reshape(-1), dtype=np.int32)
        batch.pos = positions.ctypes.data_as(ctypes.POINTER(lib.llama_pos))
        n_seq = (ctypes.c_int32 * size)(*([1] * size))
        seq0 = (lib.llama_seq_id * 1)(0)
        seq = (ctypes.POINTER(lib.llama_seq_id) * size)(
            *([ctypes.cast(seq0, ctypes.POINTER(lib.llama_seq_id))] * size)
        )
        flags = (ctypes.c_int8 * size)(*([int(want_logits)] * size))
        batch.n_seq_id, batch.seq_id, batch.logits = n_seq, seq, flags
        if int(lib.llama_decode(llm.ctx, batch)) != 0:
            raise _failed("llama.cpp could not decode the prompt around the picture")
        if want_logits:
            logits += [
                np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, k), (n_vocab,)).copy()
                for k in range(size)
            ]
    return logits


def mtmd_side_here(
    model: str,
    mmproj: str,
    rgb: bytes,
    size: tuple[int, int],
    before: str,
    after: str,
    positions: Positions,
    n_threads: int,
    n_ctx: int = VERIFY_CTX,
) -> MtmdResult:
    """In this process (a crash ends it): see the module's text. ``rgb`` is the picture's
    pixels, ``size`` (width, height); the prompt is ``before`` + picture + ``after``."""
    from ggufkit.inference.parity import open_gguf
    from ggufkit.llamacpp.device import gpu_layers

    lib, mtmd = load_mtmd()
    with open_gguf(
        model, n_ctx=n_ctx, n_batch=min(n_ctx, VERIFY_BATCH), logits_all=False, n_threads=n_threads
    ) as llm:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = gpu_layers() > 0  # the backend the language model is on
        params.print_timings = False
        params.warmup = False
        params.n_threads = n_threads
        ctx = mtmd.mtmd_init_from_file(mmproj.encode(), llm.model, params)
        if not ctx:
            raise _failed(f"libmtmd cannot open {mmproj} with {model}")
        chunks = mtmd.mtmd_input_chunks_init()
        pixels = (ctypes.c_ubyte * len(rgb)).from_buffer_copy(rgb)
        bitmap = mtmd.mtmd_bitmap_init(size[0], size[1], pixels)
        try:
            prompt = (before + mtmd.mtmd_default_marker().decode() + after).encode()
            text = mtmd.mtmd_input_text(prompt, len(prompt), True, True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise _failed("libmtmd could not lay out the prompt around the picture")
            n_total = int(mtmd.mtmd_helper_get_n_tokens(chunks))
            if n_total > n_ctx:
                raise EvaluationError(
                    f"the picture and the question take {n_total} tokens, more than the "
                    f"{n_ctx} of verify's context",
                    hint="give a smaller picture",
                )
            return _run_chunks(lib, mtmd, llm, ctx, chunks, positions)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_free(ctx)


def _run_chunks(
    lib: ModuleType, mtmd: ModuleType, llm: Any, ctx: Any, chunks: Any, positions: Positions
) -> MtmdResult:
    n_embd = int(lib.llama_model_n_embd_inp(llm.model))
    n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(llm.model)))
    mrope = bool(mtmd.mtmd_decode_use_mrope(ctx))
    found: list[MtmdChunk] = []
    embeddings: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    non_causal = False
    n_past = 0
    for i in range(int(mtmd.mtmd_input_chunks_size(chunks))):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        n_pos = int(mtmd.mtmd_input_chunk_get_n_pos(chunk))
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t(0)
            ids_p = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            ids = [int(ids_p[k]) for k in range(count.value)]
            if not ids:
                continue
            if not all(0 <= t < n_vocab for t in ids):  # -1: a marker the vocabulary lacks
                raise _failed(
                    "the projector frames the picture with tokens the model's vocabulary does "
                    "not have: the mmproj does not belong to this model"
                )
            found.append(MtmdChunk("text", ids, len(ids), len(ids)))
            line = np.arange(n_past, n_past + len(ids))[None, :]
            want = any(c.kind == "image" for c in found)
            logits += _decode(lib, llm, tokens=ids, pos=line, want_logits=want)
            n_past += len(ids)
            continue
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise _failed("the prompt holds a media chunk that is not an image")
        logits.clear()  # only the text after the last image counts
        if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
            raise _failed("libmtmd could not encode the picture")
        out = mtmd.mtmd_get_output_embd(ctx)
        rows = np.ctypeslib.as_array(out, (n_tokens * n_embd,)).reshape(n_tokens, n_embd).copy()
        embeddings.append(rows)
        non_causal = non_causal or bool(mtmd.mtmd_decode_use_non_causal(ctx, chunk))
        found.append(MtmdChunk("image", [], n_tokens, n_pos))
        if positions == "native":
            new_past = lib.llama_pos(0)
            done = mtmd.mtmd_helper_decode_image_chunk(
                ctx, llm.ctx, chunk, out, n_past, 0, llm.n_batch, ctypes.byref(new_past),
                mtmd.mtmd_helper_post_decode_callback(), None,  # no callback: NULL
            )  # fmt: skip
            if done != 0:
                raise _failed("llama.cpp could not decode the image embeddings")
            n_past = int(new_past.value)
        else:
            line = np.arange(n_past, n_past + n_tokens)[None, :]
            pos = np.repeat(line, MROPE_SECTIONS if mrope else 1, axis=0)
            _decode(lib, llm, embd=rows, pos=pos, want_logits=False)
            n_past += n_tokens
            found[-1].n_pos = n_tokens
    if not embeddings:
        raise _failed("libmtmd laid out no image chunk for the picture")
    return MtmdResult(
        chunks=found,
        embeddings=np.concatenate(embeddings),
        logits=np.stack(logits) if logits else np.zeros((0, n_vocab), dtype=np.float32),
        mrope=mrope,
        non_causal=non_causal,
    )


def mtmd_side(
    model: Path,
    mmproj: Path,
    picture: Path,
    *,
    before: str,
    after: str,
    positions: Positions,
    n_threads: int | None = None,
    n_ctx: int = VERIFY_CTX,
) -> MtmdResult:
    """:func:`mtmd_side_here` in a spawned child: a crash there is a ToolCrashedError here.
    The picture is decoded here (Pillow, as transformers' processors read it) and its RGB
    pixels handed over, so both sides start from the same pixels."""
    from PIL import Image

    from ggufkit.llamacpp.isolate import run_isolated

    with Image.open(picture) as image:
        rgb = image.convert("RGB")
        data, size = rgb.tobytes(), rgb.size
    return run_isolated(
        mtmd_side_here,
        str(model),
        str(mmproj),
        data,
        size,
        before,
        after,
        positions,
        n_threads or os.cpu_count() or 1,
        n_ctx,
        what=f"llama.cpp encoding {picture.name} with {mmproj.name}",
        hint="see the llama.cpp log in $GGUFKIT_HOME/logs",
    )
