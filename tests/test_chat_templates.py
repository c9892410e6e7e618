"""`convert --chat-template`: FastChat's formats as Jinja, proven against FastChat itself.

The oracle is ``fastchat.conversation`` (installed by ``make install``): it is a plain import, so
a missing or broken FastChat fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import jinja2
import pytest
import tiny
from click.testing import CliRunner
from fastchat.conversation import get_conv_template
from fastchat.model.model_adapter import get_conversation_template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ggufkit.cli import cli
from ggufkit.convert import convert
from ggufkit.convert.chat_formats import FORMATS
from ggufkit.convert.chat_templates import (
    KEY_NAME,
    KEY_REASON,
    KEY_SOURCE,
    KEY_STOP,
    fastchat_jinja,
    match_family,
)

REQUIRED = ("vicuna_v1.1", "one_shot", "phoenix", "llama-2")
TURNS = (
    "Hello there",
    "Hi! How can I help?",
    'Tell me a story\nin two lines, with "quotes" and a \\ backslash',
    "Once upon a time. The end.",
    "Thanks, é ✓",
)
SYSTEMS = (None, "You are terse.")


def conversation(name: str, n_turns: int, system: str | None) -> tuple[list[dict[str, str]], str]:
    """OpenAI-style messages for ``n_turns`` user turns and FastChat's prompt for them."""
    conv = get_conv_template(name)
    messages = []
    if system is not None:
        conv.set_system_message(system)
        messages.append({"role": "system", "content": system})
    for i, text in enumerate(TURNS[: 2 * n_turns - 1]):
        conv.append_message(conv.roles[i % 2], text)
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    conv.append_message(conv.roles[1], None)  # the assistant's turn, opened
    return messages, conv.get_prompt()


def render_like_llama_cpp_python(template: str, messages: list[dict[str, str]]) -> str:
    """Jinja2ChatFormatter's environment and variables (llama_cpp/llama_chat_format.py)."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(template).render(
        messages=messages,
        bos_token="<s>",
        eos_token="</s>",
        add_generation_prompt=True,
        raise_exception=raise_exception,
    )


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def convert_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["convert", *args])
    return result.exit_code, result.stdout, result.stderr


# --- the templates against FastChat, without llama.cpp ---------------------------------------


def test_the_required_names_are_fastchat_templates() -> None:
    assert set(REQUIRED) <= set(FORMATS)
    for name in FORMATS:
        assert get_conv_template(name).name == name


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("add_bos", [False, True])
def test_template_renders_fastchats_prompt(name: str, add_bos: bool) -> None:
    template = fastchat_jinja(FORMATS[name], add_bos=add_bos)
    for n_turns in (1, 2, 3):
        for system in SYSTEMS:
            messages, want = conversation(name, n_turns, system)
            got = render_like_llama_cpp_python(template, messages)
            assert got == ("<s>" if add_bos else "") + want, (n_turns, system)


def test_template_refuses_turns_out_of_order() -> None:
    template = fastchat_jinja(FORMATS["vicuna_v1.1"], add_bos=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        render_like_llama_cpp_python(template, [{"role": "assistant", "content": "hi"}])


@pytest.mark.parametrize(
    "model",
    [
        "lmsys/vicuna-7b-v1.5",
        "lmsys/vicuna-7b-delta-v0",
        "./models/vicuna-13b-v1.1/",
        "FreedomIntelligence/phoenix-inst-chat-7b",
        "meta-llama/Llama-2-7b-chat-hf",
    ],
)
def test_family_from_the_name_as_fastchats_adapters(model: str) -> None:
    found = match_family(model)
    assert found is not None
    assert found[0] == get_conversation_template(model).name
    assert repr(model) in found[1]  # the reason names what matched


def test_chimera_is_phoenix_and_unknown_names_match_nothing() -> None:
    # FastChat has no Chimera adapter (it would fall back to one_shot); LLMZoo's own format is
    # Phoenix's. For names FastChat does not know it guesses one_shot; ggufkit does not guess.
    found = match_family("FreedomIntelligence/chimera-inst-chat-7b")
    assert found is not None and found[0] == "phoenix"
    for model in ("bigscience/bloomz-7b1", "tiny-llama", "llama-7b"):
        assert match_family(model) is None


# --- conversion --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """A tiny LLaMA named like Vicuna, with the 2023 (legacy, BOS-adding) tokenizer."""
    return tiny.make_llama(
        tmp_path_factory.mktemp("tiny-vicuna-7b"), spm_model=spm_model, legacy_tokenizer=True
    )


def test_auto_picks_vicuna_from_the_name_and_records_it(vicuna_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.gguf"
    code, stdout, err = convert_cli(str(vicuna_dir), "-o", str(out))
    assert code == 0, err
    # the note goes to stderr once (stdout holds the result)
    assert "chat template: vicuna_v1.1" in err and "contains 'vicuna'" in err
    assert "chat template" not in stdout
    fields = _fields(out)
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.chat_template"] == fastchat_jinja(FORMATS["vicuna_v1.1"], add_bos=True)
    assert fields[KEY_NAME] == "vicuna_v1.1" and fields[KEY_SOURCE] == "fastchat"
    assert "contains 'vicuna'" in str(fields[KEY_REASON])
    assert KEY_STOP not in fields  # vicuna_v1.1 stops at EOS only


def test_no_match_writes_nothing_and_names_the_option(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.gguf"
    code, stdout, err = convert_cli(str(tiny_llama_dir), "-o", str(out))
    assert code == 0, err
    assert (
        "chat template: none written" in err and "--chat-template" in err
    )  # so --json users see it
    assert err.count("chat template: none written") == 1 and "chat template" not in stdout
    fields = _fields(out)
    assert "tokenizer.chat_template" not in fields and KEY_SOURCE not in fields


def test_named_template_with_stop_strings(tiny_bloom_dir: Path, tmp_path: Path) -> None:
    result = convert(tiny_bloom_dir, tmp_path / "b.gguf", chat_template="one_shot")
    fields = _fields(result.output)
    # BLOOM's tokenizer adds no BOS: the template must not write one.
    assert fields["tokenizer.chat_template"] == fastchat_jinja(FORMATS["one_shot"], add_bos=False)
    assert fields[KEY_STOP] == ["###"]
    assert fields[KEY_REASON] == (
        "named with --chat-template; FastChat's 'one_shot' format (Vicuna v0)"
    )


def test_checkpoint_template_is_kept_unless_one_is_named(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(tiny_llama_dir, tmp_path / "own"))
    config_file = model / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config["chat_template"] = own
    config_file.write_text(json.dumps(config))
    fields = _fields(convert(model, tmp_path / "own.gguf").output)
    assert fields["tokenizer.chat_template"] == own
    assert fields[KEY_SOURCE] == "checkpoint"
    named = _fields(convert(model, tmp_path / "named.gguf", chat_template="llama-2").output)
    assert named["tokenizer.chat_template"] == fastchat_jinja(FORMATS["llama-2"], add_bos=False)
    assert named[KEY_NAME] == "llama-2"


def test_template_from_a_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    template = tmp_path / "mine.jinja"
    template.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    out = tmp_path / "file.gguf"
    code, _, err = convert_cli(
        str(tiny_llama_dir), "-o", str(out), "--chat-template", str(template)
    )
    assert code == 0, err
    fields = _fields(out)
    assert fields["tokenizer.chat_template"] == template.read_text()
    assert fields[KEY_SOURCE] == "file" and fields[KEY_NAME] == "mine.jinja"


def test_bad_choices_are_usage_errors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    code, _, err = convert_cli(str(tiny_llama_dir), "-o", str(out), "--chat-template", "chatml")
    assert code == 2 and "vicuna_v1.1" in err and "Traceback" not in err
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    code, _, err = convert_cli(str(tiny_llama_dir), "-o", str(out), "--chat-template", str(broken))
    assert code == 2 and "not a valid Jinja template" in err
    assert not out.exists()


# --- through llama-cpp-python and llama.cpp's tokenizer --------------------------------------


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory: pytest.TempPathFactory, vicuna_dir: Path, tiny_bloom_dir: Path):
    """(model kind, template name) -> (GGUF, checkpoint), converted once each."""
    out_dir = tmp_path_factory.mktemp("chat-gguf")
    dirs = {"llama": vicuna_dir, "bloom": tiny_bloom_dir}
    cache: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(kind: str, name: str) -> tuple[Path, Path]:
        if (kind, name) not in cache:
            out = out_dir / f"{kind}-{name}.gguf"
            convert(dirs[kind], out, chat_template=name)
            cache[kind, name] = (out, dirs[kind])
        return cache[kind, name]

    return get


ORACLE_CASES = [("llama", name) for name in FORMATS] + [
    ("bloom", "phoenix"),
    ("bloom", "vicuna_v1.1"),
]


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.parametrize("kind,name", ORACLE_CASES)
def test_llama_cpp_python_renders_fastchats_prompt_and_tokens(
    chat_gguf, kind: str, name: str
) -> None:
    """LLaMA (legacy tokenizer, adds BOS: Vicuna, Chimera) and BLOOM (no BOS: Phoenix)."""
    from transformers import AutoTokenizer

    from ggufkit.inference.parity import open_gguf
    from ggufkit.llamacpp.bindings import load_llama_cpp

    gguf_path, hf_dir = chat_gguf(kind, name)
    load_llama_cpp()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    with open_gguf(gguf_path, vocab_only=True) as llm:
        # As Llama.__init__ builds the "chat_template.default" handler.
        bos = llm._model.token_get_text(llm.token_bos())
        eos = llm._model.token_get_text(llm.token_eos())
        formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos, bos)
        adds_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        assert adds_bos == (kind == "llama")
        for n_turns in (1, 2, 3):
            for system in SYSTEMS:
                messages, want = conversation(name, n_turns, system)
                response = formatter(messages=messages)
                assert response.prompt == (bos if adds_bos else "") + want
                assert response.added_special  # so llama-cpp-python adds no BOS of its own
                ids = llm.tokenize(
                    response.prompt.encode("utf-8"),
                    add_bos=not response.added_special,
                    special=True,
                )
                assert ids == tokenizer(want)["input_ids"], (n_turns, system)
