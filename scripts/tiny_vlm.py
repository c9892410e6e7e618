"""Build the tiny vision-language model and picture shipped in ggufkit/data/ (for the demo).

    python scripts/tiny_vlm.py --out ggufkit/data

- ``models/tiny-minicpmv``: the tests' seeded random MiniCPM-V 4.6 (``tests/tiny_vision.py``:
  a SigLIP-style tower 32 wide, a Qwen3.5 text model 64 wide, its byte-level BPE tokenizer with
  MiniCPM-V's image tokens, its image processor), saved in float16. Its weights are random: it
  reads a picture and answers noise, which is all the demo needs to show both image paths.
- ``pictures/shapes.png``: the tests' picture (a gradient with four coloured rectangles).

Seeded, so a rerun writes the same weights; the tokenizer training is deterministic.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the builders of the tests (dev-only, not in the package)

import tiny_vision  # noqa: E402

MODEL = "tiny-minicpmv"
PICTURE = "shapes.png"
KEPT = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")  # fmt: skip


def build(out: Path) -> None:
    import torch
    from transformers import MiniCPMV4_6ForConditionalGeneration

    target = out / "models" / MODEL
    with tempfile.TemporaryDirectory() as tmp:
        built = tiny_vision.make_minicpmv46(Path(tmp) / MODEL)
        model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(built, dtype=torch.float16)
        model.save_pretrained(built, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in KEPT:
            if (built / name).is_file():
                shutil.copy2(built / name, target / name)
    tiny_vision.make_picture(out / "pictures" / PICTURE)
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"{target}: {size / 2**20:.2f} MiB; {out / 'pictures' / PICTURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "ggufkit" / "data")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
