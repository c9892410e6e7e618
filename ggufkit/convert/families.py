"""What ``convert`` handles and what the tests prove for each architecture (data, one place).

``convert --help`` and the README's family table say the same; ``tests/test_convert_families.py``
checks that both list every row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    hf_architecture: str
    models: str  # the published families it covers
    engine: str  # "native" or "upstream"
    proven: str  # what the tests check, on tiny models built locally


FAMILIES: tuple[Family, ...] = (
    Family(
        "LlamaForCausalLM",
        "LLaMA-1/2, Vicuna, Chimera (sentencepiece); Llama 3, SmolLM (byte-level BPE)",
        "native",
        "logits, tokenizer, tensors byte-identical to upstream's; BPE: metadata too",
    ),
    Family(
        "BloomForCausalLM",
        "BLOOM, BLOOMZ, Phoenix",
        "native",
        "logits, tokenizer, tensors byte-identical to upstream's",
    ),
    Family(
        "FalconForCausalLM",
        "Falcon (multi-query)",
        "upstream",
        "logits, tokenizer (locally trained byte-level BPE)",
    ),
    Family(
        "Glm4ForCausalLM",
        "GLM-4",
        "upstream",
        "logits, tokenizer (locally trained byte-level BPE)",
    ),
    Family(
        "MiniCPM3ForCausalLM",
        "MiniCPM3",
        "upstream",
        "logits, tokenizer (sentencepiece)",
    ),
)
