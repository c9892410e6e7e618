"""Child process of ``convert-lora``: the pinned ``convert_lora_to_gguf.py`` with ggufkit's answers.

Run as ``python _lora_child.py SETTINGS.json UPSTREAM-ARGS...``. It imports nothing from ggufkit
(the pinned gguf-py must come first on the path). Two answers are given to upstream, which
writes only ``adapter.lora.alpha`` and lets llama.cpp scale every tensor by alpha / rank:

- ``b_factors``: lora_B tensors multiplied as they are loaded, for modules whose PEFT scale is
  not the written alpha over their rank (rsLoRA with a rank pattern, alpha_pattern);
- ``kv``: ggufkit's provenance keys (source files and sha256s), added before the header is
  written.
The adapter_config.json upstream reads is ggufkit's copy, with the alpha it must write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    settings = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    source = Path(settings["source"])
    sys.path[0] = str(source)  # this file's own directory must not shadow upstream's modules
    sys.path.insert(0, str(source / "gguf-py"))
    import gguf

    _scale_b(settings.get("b_factors") or {})
    _add_kv(gguf, settings.get("kv") or {})
    import runpy

    script = source / "convert_lora_to_gguf.py"
    sys.argv = [str(script), *argv[2:]]
    runpy.run_path(str(script), run_name="__main__")  # the script's work is under __main__


def _scale_b(factors: dict[str, float]) -> None:
    if not factors:
        return
    import safetensors.torch

    original = safetensors.torch.load_file

    def load_file(path: Any, device: str = "cpu") -> dict[str, Any]:
        tensors = original(path, device=device)
        for name, factor in factors.items():
            tensors[name] = tensors[name].float() * factor
        return tensors

    safetensors.torch.load_file = load_file  # type: ignore[assignment]


def _add_kv(gguf: Any, kv: dict[str, Any]) -> None:
    original = gguf.GGUFWriter.write_header_to_file

    def write_header_to_file(self: Any, *args: Any, **kwargs: Any) -> None:
        for key, value in kv.items():
            if isinstance(value, list):
                self.add_array(key, value)
            else:
                self.add_string(key, value)
        original(self, *args, **kwargs)

    gguf.GGUFWriter.write_header_to_file = write_header_to_file


if __name__ == "__main__":
    main(sys.argv)
