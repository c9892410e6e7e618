"""Tiny vision-language checkpoints and a picture, built locally (seeded; nothing downloaded).

MiniCPM-V 4.6 (``MiniCPMV4_6ForConditionalGeneration``: a SigLIP-style vision tower with a
window-attention merger, a downsampling projector, a Qwen3.5 text model with linear and full
attention) in the smallest shape the pinned llama.cpp accepts: the vision ``image_size`` stays 980
with patch 14 (clip.cpp's 70x70 position grid), and the linear-attention value head size equals
the key head size (llama.cpp's loader assumes it). The processor's slices are 112 pixels, so a
picture costs a few image tokens. Its tokenizer is a byte-level BPE trained on the test corpus
with MiniCPM-V's image tokens (``<image>``, ``<slice>``, ...) as special tokens.

The processor itself is not saved whole: its video class needs torchvision, which has no CPU build
for the pinned torch. The image processor and the tokenizer are saved, which is what the
converter (``preprocessor_config.json``) and llama.cpp need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiny import CORPUS, _jitter_norms
from tokenizer_training import as_transformers_tokenizer, train_byte_bpe

# MiniCPM-V's tokens around an image, as llama.cpp's mtmd looks them up, and the placeholders.
MINICPMV_IMAGE_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The processor's slice size: 8x8 patches of 14 pixels, 4 image tokens after 16x downsampling.
SCALE_RESOLUTION = 112


def _tokenizer(out_dir: Path, vocab_size: int) -> Any:
    fast = as_transformers_tokenizer(train_byte_bpe(vocab_size, files=[CORPUS], style="gpt2"))
    specials = [*CHAT_TOKENS, *MINICPMV_IMAGE_TOKENS.values()]
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["extra_special_tokens"] = dict(MINICPMV_IMAGE_TOKENS)  # the processor's attributes
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return fast


def make_minicpmv46(out_dir: Path, *, seed: int = 0) -> Path:
    """A random MiniCPMV4_6ForConditionalGeneration with its tokenizer and image processor."""
    import torch
    from transformers import MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import (
        MiniCPMV4_6ImageProcessorPil,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(out_dir, 600)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = {
        "model_type": "qwen3_5_text",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "layer_types": [
            "linear_attention",
            "linear_attention",
            "linear_attention",
            "full_attention",
        ],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.05,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [1, 1, 0],
            "mrope_interleaved": True,
        },
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 980,
        "patch_size": 14,
    }
    config = MiniCPMV4_6Config(
        text_config=text,
        vision_config=vision,
        insert_layer_id=0,
        image_size=SCALE_RESOLUTION,
        image_token_id=tokenizer.convert_tokens_to_ids(MINICPMV_IMAGE_TOKENS["image_token"]),
        video_token_id=tokenizer.convert_tokens_to_ids(MINICPMV_IMAGE_TOKENS["video_token"]),
        architectures=["MiniCPMV4_6ForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = MiniCPMV4_6ForConditionalGeneration(config)
    _jitter_norms(model, seed)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    processor = MiniCPMV4_6ImageProcessorPil(scale_resolution=SCALE_RESOLUTION, max_slice_nums=4)
    processor.save_pretrained(str(out_dir))
    return out_dir


QWEN2VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def make_qwen2vl(out_dir: Path, *, seed: int = 0) -> Path:
    """A random Qwen2VLForConditionalGeneration (the second family: M-RoPE text model, a ViT
    whose patches merge 2x2 into the text width) with its tokenizer and image processor."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = as_transformers_tokenizer(train_byte_bpe(600, files=[CORPUS], style="gpt2"))
    fast.add_special_tokens({"additional_special_tokens": [*CHAT_TOKENS, *QWEN2VL_TOKENS]})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    ids = {token: fast.convert_tokens_to_ids(token) for token in QWEN2VL_TOKENS}
    eos = fast.convert_tokens_to_ids("<|im_end|>")
    text = {
        "vocab_size": len(fast),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.05,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "bos_token_id": None,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        },
    }
    # depth 3 at least: the converter maps the merger's mlp.2 as a block index of the tower
    vision = {"depth": 3, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        architectures=["Qwen2VLForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _jitter_norms(model, seed)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # 28x28 pixels a token after the 2x2 merge: 4 to 16 image tokens a picture.
    pixels = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}
    Qwen2VLImageProcessorPil(size=pixels).save_pretrained(str(out_dir))
    return out_dir


def make_picture(path: Path, *, size: tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """A small RGB picture: a gradient with a few coloured rectangles (deterministic)."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        x1, y1 = x0 + rng.randrange(8, width // 2), y0 + rng.randrange(8, height // 2)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def upstream_mmproj(model_dir: Path, out: Path) -> Path:
    """The reference projector: the pinned convert_hf_to_gguf.py --mmproj run directly (its own
    gguf-py). (Its language model needs ggufkit's pre-tokenizer answer, so has no such run.)"""
    import os
    import subprocess
    import sys

    from ggufkit.llamacpp.source import ensure_source

    source = ensure_source()
    env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
    script = str(source / "convert_hf_to_gguf.py")
    command = [sys.executable, script, str(model_dir), "--outfile", str(out), "--mmproj"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"upstream conversion failed:\n{result.stderr[-3000:]}")
    return out
