"""Falcon, GLM-4 and MiniCPM3 through the upstream engine: logits and tokenization vs transformers.

Each tiny checkpoint has a tokenizer trained locally, so upstream's pre-tokenizer hash list does
not know it (as for any fine-tune that adds a token): the conversion must still go through, and
the tokenizer parity proves that the pre-tokenizer ggufkit gave upstream is the right one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny
import tiny_more

from ggufkit.convert import convert

FAMILIES = ["falcon", "glm4", "minicpm3"]
F16_TOL = 0.005  # max |Δlogit| as a fraction of the largest |logit|, as for LLaMA and BLOOM
# Special tokens in the text too: parsed the same way by both sides.
TAILS = {"falcon": "</s>", "glm4": "<|user|>Hi<|endoftext|>", "minicpm3": "</s><s>And more"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> dict[str, Path]:
    return {
        "falcon": tiny_more.make_falcon(tmp_path_factory.mktemp("falcon")),
        "glm4": tiny_more.make_glm4(tmp_path_factory.mktemp("glm4")),
        "minicpm3": tiny_more.make_minicpm3(
            tmp_path_factory.mktemp("minicpm3"), spm_model=spm_model
        ),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, family_dirs: dict[str, Path]):
    out_dir = tmp_path_factory.mktemp("families")
    cache: dict[str, object] = {}

    def get(family: str):  # -> ConvertResult
        if family not in cache:
            cache[family] = convert(family_dirs[family], out_dir / f"{family}.gguf")
        return cache[family]

    return get


def _ids(model_dir: Path, n: int = 128) -> list[int]:
    vocab = int(tiny_more.read_config(model_dir)["vocab_size"])
    return [int(i) for i in np.random.default_rng(11).integers(3, vocab, n)]


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.needs_torch
@pytest.mark.parametrize("family", FAMILIES)
def test_converts_through_upstream(converted, family_dirs, family: str) -> None:
    result = converted(family)
    assert result.engine == "upstream" and result.gguf_arch == family
    fields = _fields(result.output)
    assert fields["general.architecture"] == family
    if family == "falcon":
        # transformers 5 saves num_kv_heads == 4 for this multi-query model; it has one.
        assert tiny_more.read_config(family_dirs[family])["num_kv_heads"] == 4
        assert fields["falcon.attention.head_count_kv"] == 1
    if family != "minicpm3":  # byte-level BPE that upstream's hash list does not know
        assert fields["tokenizer.ggml.pre"] == "gpt-2"
        assert any("derived from tokenizer.json" in note for note in result.notes)


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.parametrize("family", ["falcon", "glm4"])
def test_upstream_alone_refuses_them(family_dirs, tmp_path: Path, family: str) -> None:
    """What ggufkit's answers fix: the same checkpoints through the bare upstream script."""
    with pytest.raises(RuntimeError) as failure:
        tiny.upstream_convert(family_dirs[family], tmp_path / "bare.gguf")
    expected = {
        # Trusts transformers 5's num_kv_heads (4) and cannot split the fused qkv weight.
        "falcon": "is invalid for input of size",
        "glm4": "BPE pre-tokenizer was not recognized",
    }
    assert expected[family] in str(failure.value)


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.parametrize("family", FAMILIES)
def test_logit_parity(converted, family_dirs, family: str) -> None:
    from ggufkit.inference.parity import logit_parity

    ids = _ids(family_dirs[family])
    report = logit_parity(converted(family).output, family_dirs[family], ids)
    assert report.n_positions >= 100
    assert report.rel_diff <= F16_TOL, report.summary()
    assert report.decisive_mismatches(F16_TOL * report.max_abs_logit) == [], report.summary()


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_parity(converted, family_dirs, family: str, corpus_path: Path) -> None:
    from ggufkit.inference.parity import tokenizer_parity

    text = corpus_path.read_text(encoding="utf-8")
    assert len(text.encode()) >= 10_000
    report = tokenizer_parity(converted(family).output, family_dirs[family], text + TAILS[family])
    assert report.equal, report.summary()
    assert report.n_reference > 1000


@pytest.mark.needs_torch
def test_upstream_writes_the_named_chat_template(family_dirs, tmp_path: Path) -> None:
    from ggufkit.convert.chat_formats import FORMATS
    from ggufkit.convert.chat_templates import KEY_NAME, KEY_SOURCE, fastchat_jinja

    result = convert(family_dirs["minicpm3"], tmp_path / "m.gguf", chat_template="phoenix")
    fields = _fields(result.output)
    assert fields["tokenizer.ggml.add_bos_token"] is True  # so the template starts with BOS
    assert fields["tokenizer.chat_template"] == fastchat_jinja(FORMATS["phoenix"], add_bos=True)
    assert fields[KEY_NAME] == "phoenix" and fields[KEY_SOURCE] == "fastchat"
    assert any("chat template: phoenix" in note for note in result.notes)


# What ``convert --help`` and the README's family table say each proven family is: one table,
# held here, so the two stay the same (the package never used it, so it lives with its test).
@dataclass(frozen=True)
class Family:
    hf_architecture: str
    models: str  # the published families it covers
    engine: str  # "native" or "upstream"
    proven: str  # what the tests check, on tiny models built locally


PROVEN_FAMILIES: tuple[Family, ...] = (
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


def test_help_and_readme_list_every_family() -> None:
    from click.testing import CliRunner

    from ggufkit.cli import cli

    help_text = CliRunner().invoke(cli, ["convert", "--help"]).stdout
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for family in PROVEN_FAMILIES:
        assert family.hf_architecture in help_text
        row = (
            f"| `{family.hf_architecture}` | {family.models} | {family.engine} | {family.proven} |"
        )
        assert row in readme, row
