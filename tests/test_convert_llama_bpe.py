"""LLaMA with a GPT-2-style byte-level BPE vocabulary (Llama 3, SmolLM2) through the native engine.

Two tiny checkpoints (tests/tiny_more.py): ``llama3`` (Split(Llama 3 regex) + ByteLevel, specials
after the vocab, BOS from a Sequence[ByteLevel, TemplateProcessing] post-processor, Llama 3.1
rope scaling) and ``smollm`` (ByteLevel with the GPT-2 regex, ChatML specials first, a ByteLevel
post-processor, tied embeddings padded to 49152 rows). Both tokenizers are trained here, so the
pinned upstream converter does not know their hashes: compared with upstream told the name, and
with ggufkit's upstream engine, which answers it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest
import tiny
import tiny_more
from test_convert_bloom import upstream_told

from ggufkit.convert import ConvertResult, convert
from ggufkit.convert.vocab_bpe import KEY_PRE_SOURCE
from ggufkit.core.errors import GGUFKitError, TokenizerError, UsageError

CHAT_TEXT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTo be, or not?<|eot_id|>"
    "<|im_start|>assistant\n<think>Whether 'tis nobler</think><|im_end|>\n"
)


@pytest.fixture(scope="module")
def bpe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        style: tiny_more.make_llama_bpe(tmp_path_factory.mktemp(f"llama-{style}"), style=style)
        for style in ("llama3", "smollm")
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, bpe_dirs: dict[str, Path]):
    """(style, outtype) -> the default engine's result, converted once per module."""
    out_dir = tmp_path_factory.mktemp("llama-bpe-out")
    cache: dict[tuple[str, str], ConvertResult] = {}

    def get(style: str, outtype: str = "f16") -> ConvertResult:
        if (style, outtype) not in cache:
            out = out_dir / f"{style}-{outtype}.gguf"
            cache[style, outtype] = convert(bpe_dirs[style], out, outtype=outtype)
        return cache[style, outtype]

    return get


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def tensors(path: Path) -> dict[str, tuple[int, list[int], bytes]]:
    reader = gguf.GGUFReader(path)
    return {
        t.name: (int(t.tensor_type), [int(n) for n in t.shape], t.data.tobytes())
        for t in reader.tensors
    }


def model_keys(values: dict[str, Any]) -> dict[str, Any]:
    """What the model's file says, without the writer's own records (general.*, ggufkit.*)."""
    return {k: v for k, v in values.items() if not k.startswith(("general.", "ggufkit.", "GGUF."))}


def assert_same_file(ours: Path, theirs: Path) -> None:
    mine, other = tensors(ours), tensors(theirs)
    assert sorted(mine) == sorted(other)
    assert [name for name in other if mine[name] != other[name]] == []
    a, b = model_keys(fields(ours)), model_keys(fields(theirs))
    assert sorted(a) == sorted(b)
    assert [key for key in b if a[key] != b[key]] == []
    tokenizer_order = [k for k in b if k.startswith("tokenizer.")]
    assert [k for k in a if k.startswith("tokenizer.")] == tokenizer_order


# --- without llama.cpp ----------------------------------------------------------------------


@pytest.mark.needs_torch
def test_llama3_vocabulary_and_metadata(converted, bpe_dirs: dict[str, Path]) -> None:
    result = converted("llama3")
    assert result.engine == "native" and result.gguf_arch == "llama"
    values = fields(result.output)
    assert values["tokenizer.ggml.model"] == "gpt2"
    assert values["tokenizer.ggml.pre"] == "llama-bpe"
    assert values[KEY_PRE_SOURCE] == "tokenizer.json"  # derived: the hash is not upstream's
    tokenizer_json = json.loads((bpe_dirs["llama3"] / "tokenizer.json").read_text())
    tokens, types = values["tokenizer.ggml.tokens"], values["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 706
    added = {a["content"]: a["id"] for a in tokenizer_json["added_tokens"]}
    for special in tiny_more.LLAMA3_SPECIALS:
        assert tokens[added[special]] == special
        assert types[added[special]] == gguf.TokenType.CONTROL
    assert types[added["<think>"]] == gguf.TokenType.USER_DEFINED
    assert set(types[:700]) == {gguf.TokenType.NORMAL}
    merges = [" ".join(pair) for pair in tokenizer_json["model"]["merges"]]
    assert values["tokenizer.ggml.merges"] == merges
    # BOS from the TemplateProcessing after ByteLevel; EOS from tokenizer_config.json
    assert values["tokenizer.ggml.bos_token_id"] == added["<|begin_of_text|>"]
    assert values["tokenizer.ggml.eos_token_id"] == added["<|eot_id|>"]
    assert (values["tokenizer.ggml.add_bos_token"], values["tokenizer.ggml.add_eos_token"]) == (
        True,
        False,
    )
    assert values["tokenizer.chat_template"] == tiny_more.LLAMA3_CHAT
    assert "rope_freqs.weight" in tensors(result.output)  # Llama 3.1 rope scaling
    assert any("'llama-bpe'" in note for note in result.notes)


@pytest.mark.needs_torch
def test_smollm_vocabulary_follows_upstreams_rules(converted) -> None:
    values = fields(converted("smollm").output)
    assert values["tokenizer.ggml.pre"] == "gpt-2"
    assert len(values["tokenizer.ggml.tokens"]) == 49152  # padded with [PAD<id>] rows
    assert values["tokenizer.ggml.tokens"][-1] == "[PAD49151]"
    # A ByteLevel post-processor adds nothing, and a 49152-row LLaMA never gets BOS upstream.
    assert values["tokenizer.ggml.add_bos_token"] is False
    assert values["tokenizer.ggml.add_eos_token"] is False
    assert values["tokenizer.ggml.add_space_prefix"] is False
    assert (values["tokenizer.ggml.bos_token_id"], values["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert values["tokenizer.chat_template"] == tiny_more.CHATML
    assert "output.weight" not in tensors(converted("smollm").output)  # tied


@pytest.mark.needs_torch
def test_pre_tokenizer_option(
    bpe_dirs: dict[str, Path], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = convert(bpe_dirs["llama3"], tmp_path / "o.gguf", outtype="f32", pre_tokenizer="gpt-2")
    values = fields(out.output)
    assert (values["tokenizer.ggml.pre"], values[KEY_PRE_SOURCE]) == ("gpt-2", "option")
    with pytest.raises(UsageError, match="sentencepiece"):
        convert(tiny_llama_dir, tmp_path / "spm.gguf", pre_tokenizer="gpt-2")
    assert not list(tmp_path.glob("spm.gguf*"))


@pytest.mark.needs_torch
def test_unrecognised_split_asks_for_the_option(bpe_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A split regex no llama.cpp family has, and a hash upstream does not know: no engine can
    name it, so the native engine says how to (auto does not hand it to upstream to fail)."""
    model = tmp_path / "odd"
    shutil.copytree(bpe_dirs["llama3"], model)
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="cannot tell which llama.cpp pre-tokenizer") as caught:
        convert(model, tmp_path / "odd.gguf")
    assert "`pre_tokenizer` NAME" in (caught.value.hint or "")
    assert not list(tmp_path.glob("odd.gguf*"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["added_tokens"].append({"id": "not a number", "content": "<x>"}),
        lambda d: d["added_tokens"].append({"content": "<no id>"}),
        lambda d: d.__setitem__("normalizer", ["not", "an", "object"]),
    ],
    ids=["id-not-a-number", "id-missing", "normalizer-a-list"],
)
def test_a_broken_tokenizer_json_is_a_clear_error(
    bpe_dirs: dict[str, Path], tmp_path: Path, damage: Any
) -> None:
    """A hostile or damaged tokenizer.json ends in ggufkit's error, nothing written."""
    model = tmp_path / "damaged"
    shutil.copytree(bpe_dirs["llama3"], model)
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    damage(data)
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(GGUFKitError):
        convert(model, tmp_path / "damaged.gguf", engine="native")
    assert not list(tmp_path.glob("damaged.gguf*"))


# --- against upstream ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama3_byte_identical_to_upstream(
    converted, bpe_dirs: dict[str, Path], tmp_path: Path, outtype: str
) -> None:
    ours = converted("llama3", outtype).output
    theirs = upstream_told(bpe_dirs["llama3"], tmp_path / "up.gguf", "llama-bpe", outtype=outtype)
    assert_same_file(ours, theirs)


@pytest.mark.slow
@pytest.mark.needs_torch
def test_smollm_byte_identical_to_the_upstream_engine(
    converted, bpe_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """ggufkit's upstream engine: upstream's own converter, told the derived pre-tokenizer only
    when it asks; the parent neither imports torch nor reads the written file's tensors."""
    out = tmp_path / "upstream.gguf"
    script = (
        "import json, sys, gguf; from ggufkit.convert import convert\n"
        "gguf.GGUFReader = None  # the result comes from the header alone\n"
        f"r = convert({str(bpe_dirs['smollm'])!r}, {str(out)!r}, engine='upstream')\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'n': r.n_tensors, "
        "'arch': r.gguf_arch, 'engine': r.engine, 'notes': r.notes}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    assert (report["engine"], report["arch"]) == ("upstream", "llama")
    assert report["n"] == len(tensors(out))
    assert "pre-tokenizer 'gpt-2', derived from tokenizer.json" in report["notes"]
    assert_same_file(converted("smollm").output, out)


@pytest.mark.slow
@pytest.mark.needs_torch
def test_upstream_alone_does_not_know_the_tokenizer(
    bpe_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="BPE pre-tokenizer was not recognized"):
        tiny.upstream_convert(bpe_dirs["smollm"], tmp_path / "plain.gguf")


# --- through llama.cpp -----------------------------------------------------------------------


@pytest.mark.needs_torch
@pytest.mark.needs_llamacpp
@pytest.mark.parametrize("style", ["llama3", "smollm"])
def test_verify_passes(converted, bpe_dirs: dict[str, Path], style: str, corpus_path: Path) -> None:
    from ggufkit.inference.parity import tokenizer_parity
    from ggufkit.inference.verify import verify

    result = converted(style)
    report = verify(result.output, bpe_dirs[style], text_file=corpus_path, positions=64)
    assert report.passed, report.problems
    assert report.tokenizer.equal and report.notes == []
    assert report.logits.n_positions == 64
    chat = tokenizer_parity(result.output, bpe_dirs[style], CHAT_TEXT)
    assert chat.equal, chat.summary()


# --- a tiktoken tokenizer.model; tokenizer.json read once ------------------------------------


def write_tiktoken(path: Path, tokenizer_json: Path) -> None:
    """Llama 3's tokenizer.model format: base64 of each token's bytes and its rank, a line each."""
    import base64

    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    to_byte = {chr(b): b for b in printable}
    to_byte |= {chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in printable)}
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    lines = [
        f"{base64.b64encode(bytes(to_byte[c] for c in token)).decode()} {rank}\n"
        for token, rank in sorted(vocab.items(), key=lambda item: item[1])
    ]
    path.write_text("".join(lines), encoding="ascii")


@pytest.mark.needs_torch
def test_a_tiktoken_tokenizer_model_beside_tokenizer_json_is_read_as_byte_level_bpe(
    converted, bpe_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # A Llama-3 derivative that copies Llama 3's tiktoken tokenizer.model beside tokenizer.json:
    # sentencepiece cannot read that file; the vocabulary is tokenizer.json's byte-level BPE.
    model = tmp_path / "llama3-tiktoken"
    shutil.copytree(bpe_dirs["llama3"], model)
    write_tiktoken(model / "tokenizer.model", model / "tokenizer.json")
    result = convert(model, tmp_path / "tiktoken.gguf")
    plain = converted("llama3")
    assert model_keys(fields(result.output)) == model_keys(fields(plain.output))
    assert fields(result.output)["tokenizer.ggml.model"] == "gpt2"
    assert_same_file(result.output, plain.output)


@pytest.mark.needs_torch
def test_a_tiktoken_tokenizer_model_alone_goes_to_upstream(
    bpe_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from ggufkit.convert.arch.llama import LlamaConverter
    from ggufkit.core.errors import NativeUnsupportedError

    model = tmp_path / "tiktoken-only"
    shutil.copytree(bpe_dirs["llama3"], model)
    write_tiktoken(model / "tokenizer.model", model / "tokenizer.json")
    (model / "tokenizer.json").unlink()
    with pytest.raises(NativeUnsupportedError, match="tiktoken"):
        LlamaConverter.check_native(model, tiny_more.read_config(model))


@pytest.mark.needs_torch
def test_the_native_bpe_path_parses_tokenizer_json_once(
    bpe_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (bpe_dirs["llama3"] / "tokenizer.json").read_text(encoding="utf-8")
    parses = []
    loads = json.loads

    def counting(data: Any, *args: Any, **kwargs: Any) -> Any:
        if data == text:
            parses.append(1)
        return loads(data, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    convert(bpe_dirs["llama3"], tmp_path / "once.gguf")
    # the engine choice (before anything is opened), the converter's one reading, and gguf-py's
    # SpecialVocab (its merges and chat template: it opens the file itself)
    assert len(parses) == 3
