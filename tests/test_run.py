"""`ggufkit run`: streaming generation through llama-cpp-python, seeds, stops and chat templates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.formats.gguf_reader import read_gguf
from ggufkit.inference.generate import unescape

# Starts with the BOS token, as real templates do: a chat prompt gets no automatic BOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
    "{% endfor %}assistant:"
)


def test_unescape() -> None:
    assert unescape(r"\n") == "\n"
    assert unescape(r"Q:\tA\\") == "Q:\tA\\"
    assert unescape("Q:") == "Q:"
    assert unescape(r"é\n") == "é\n"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["run", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def chat_gguf(tiny_llama_f16_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template added to its metadata (by gguf-py's own tool)."""
    out = tmp_path_factory.mktemp("chat") / "tiny-chat.gguf"
    command = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force"]
    command += ["--chat-template", CHAT_TEMPLATE, str(tiny_llama_f16_gguf), str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return out


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_fixed_seed_is_reproducible(tiny_llama_f16_gguf: Path) -> None:
    args = [str(tiny_llama_f16_gguf), "-p", "To be, or not", "-n", "24", "--seed", "42", "--json"]
    first, second = run(*args), run(*args)
    assert first[0] == 0, first[2]
    one, two = json.loads(first[1]), json.loads(second[1])
    assert one["text"] and one["text"] == two["text"]
    assert one["seed"] == 42 and one["tokens"] == 24 and one["finish_reason"] == "length"
    other = json.loads(run(*args[:-3], "--seed", "43", "--json")[1])
    assert other["text"] != one["text"]  # the seed, not luck, fixes the output


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_streams_to_stdout_and_reports_on_stderr(tiny_llama_f16_gguf: Path) -> None:
    args = [str(tiny_llama_f16_gguf), "-p", "To be, or not", "-n", "16", "--seed", "7"]
    code, out, err = run(*args)
    assert code == 0, err
    expected = json.loads(run(*args, "--json")[1])["text"]
    assert out == expected + "\n"
    assert "16 tokens" in err and "seed 7" in err
    code, out, _ = run(*args, "--echo")
    assert out == "To be, or not" + expected + "\n"


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_the_guides_example_stops_at_q_or_newline(tiny_llama_f16_gguf: Path) -> None:
    prompt = "Q: what is your name? A: "
    base = [str(tiny_llama_f16_gguf), "-p", prompt, "-n", "48", "--seed", "5", "--json"]
    code, out, err = run(*base, "--stop", "Q:", "--stop", r"\n")
    assert code == 0, err
    text = json.loads(out)["text"]
    assert "\n" not in text and "Q:" not in text
    # A stop string that the free generation does contain cuts it right there.
    free = json.loads(run(*base)[1])["text"]
    starts = [i for i in range(len(free) // 2, len(free) - 1) if not free[i : i + 2].isspace()]
    assert starts, free
    stop = free[starts[0] : starts[0] + 2]
    cut = json.loads(run(*base, "--stop", stop)[1])
    assert cut["text"] == free[: free.find(stop)]
    assert cut["finish_reason"] == "stop"


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_chat_uses_the_gguf_template(chat_gguf: Path) -> None:
    chat = run(str(chat_gguf), "--chat", "-p", "hello", "-n", "12", "--temp", "0", "--json")
    assert chat[0] == 0, chat[2]
    # The template's rendering typed by hand: a plain prompt gets BOS only if the GGUF says so.
    adds_bos = read_gguf(chat_gguf).metadata.get("tokenizer.ggml.add_bos_token", True)
    prompt = ("" if adds_bos else "<s>") + "user: hello\nassistant:"
    by_hand = run(str(chat_gguf), "-p", prompt, "-n", "12", "--temp", "0", "--json")
    assert json.loads(chat[1])["text"] == json.loads(by_hand[1])["text"]
    assert json.loads(chat[1])["prompt_tokens"] == json.loads(by_hand[1])["prompt_tokens"]
    code, out, err = run(str(chat_gguf), "--chat", "-p", "hello", "-n", "8", "--seed", "1")
    assert code == 0 and out.strip(), err


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_chat_without_a_template_is_a_usage_error(tiny_llama_f16_gguf: Path) -> None:
    code, _, err = run(str(tiny_llama_f16_gguf), "--chat", "-p", "hello")
    assert code == 2
    assert "has no chat template" in err and "Traceback" not in err


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "absent.gguf"), "-p", "hi")
    assert code == 1
    assert "does not exist" in err and "Traceback" not in err


# --- multi-turn chat with the templates convert writes ----------------------------------------


@pytest.fixture(scope="module")
def embedded_chat(tmp_path_factory: pytest.TempPathFactory):
    """(embedded model, template name) -> its f16 GGUF with that template."""
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model

    out_dir = tmp_path_factory.mktemp("embedded-chat")
    cache: dict[tuple[str, str], Path] = {}

    def get(model: str, template: str) -> Path:
        if (model, template) not in cache:
            out = out_dir / f"{model}-{template}.gguf"
            convert(embedded_model(model), out, chat_template=template)
            cache[model, template] = out
        return cache[model, template]

    return get


def _rendered_tokens(gguf_path: Path, messages: list[dict[str, str]]) -> int:
    """Tokens of the conversation as llama-cpp-python formats and tokenizes a chat prompt."""
    from ggufkit.inference.parity import open_gguf
    from ggufkit.llamacpp.bindings import load_llama_cpp

    load_llama_cpp()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    with open_gguf(gguf_path, vocab_only=True) as llm:
        bos = llm._model.token_get_text(llm.token_bos())
        eos = llm._model.token_get_text(llm.token_eos())
        formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos, bos)
        prompt = formatter(messages=messages).prompt
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
@pytest.mark.parametrize(
    "model,template", [("tiny-llama", "vicuna_v1.1"), ("tiny-bloom", "phoenix")]
)
def test_chat_is_a_conversation_on_the_embedded_models(
    embedded_chat, model: str, template: str
) -> None:
    path = embedded_chat(model, template)
    turns = ["Who art thou?", "Speak again.", "Farewell."]
    args = [str(path), "--chat", "-n", "12", "--temp", "0", "--system", "Be brief."]
    for turn in turns:
        args += ["-p", turn]
    code, out, err = run(*args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [t["prompt"] for t in data["turns"]] == turns
    assert data["text"] == data["turns"][-1]["text"]
    # Every turn's prompt is the whole conversation so far, as the template renders it.
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in data["turns"]:
        messages.append({"role": "user", "content": turn["prompt"]})
        assert turn["prompt_tokens"] == _rendered_tokens(path, messages)
        assert turn["finish_reason"] in ("stop", "length") and turn["tokens"] >= 1
        messages.append({"role": "assistant", "content": turn["text"]})
    # Text mode: the replies on stdout, each ended by a newline.
    code, out, err = run(*args)
    assert code == 0, err
    assert out == "".join(t["text"] + "\n" for t in data["turns"])


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_chat_reads_turns_from_stdin(embedded_chat) -> None:
    path = embedded_chat("tiny-llama", "vicuna_v1.1")
    base = [str(path), "--chat", "-n", "8", "--temp", "0", "--json"]
    result = CliRunner().invoke(cli, ["run", *base], input="To be?\n\nOr not?\n")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [t["prompt"] for t in data["turns"]] == ["To be?", "Or not?"]
    given = json.loads(run(*base, "-p", "To be?", "-p", "Or not?")[1])
    assert [t["text"] for t in data["turns"]] == [t["text"] for t in given["turns"]]


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_chat_stops_at_the_templates_stop_strings(
    embedded_chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.inference import generate

    # zero_shot: one_shot's stop string without its example exchange, longer than this model's
    # 512-token context.
    path = embedded_chat("tiny-llama", "zero_shot")
    assert generate.template_stops(path) == ["###"]  # FastChat's stop_str, from the file
    args = [str(path), "--chat", "-p", "Who art thou?", "-n", "40", "--temp", "0", "--json"]
    free = json.loads(run(*args)[1])["text"]
    starts = [i for i in range(len(free) // 2, len(free) - 1) if not free[i : i + 2].isspace()]
    assert starts, free
    stop = free[starts[0] : starts[0] + 2]
    # A template whose stop string the free reply contains: the reply ends right before it.
    monkeypatch.setattr(generate, "template_stops", lambda model: ["###", stop])
    cut = json.loads(run(*args)[1])
    assert cut["text"] == free[: free.find(stop)] and cut["finish_reason"] == "stop"


def test_several_prompts_need_chat(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "m.gguf"), "-p", "a", "-p", "b")
    assert code == 2 and "--chat" in err
    code, _, err = run(str(tmp_path / "m.gguf"))
    assert code == 2 and "-p" in err


def test_the_sampling_options_reach_the_library_as_one_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.cli import run as run_command
    from ggufkit.inference.generate import GenerationResult
    from ggufkit.inference.sampling import Sampling

    seen: list[tuple[str, Sampling]] = []

    def fake(kind: str, count: int):  # type: ignore[no-untyped-def]
        def call(model, prompts, sampling, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((kind, sampling))
            done = GenerationResult("x", 1, 1, "stop", sampling.seed or 0, 0.1)
            return done if count == 1 else [done]

        return call

    monkeypatch.setattr(run_command, "generate", fake("generate", 1))
    monkeypatch.setattr(run_command, "converse", fake("converse", 2))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    options = ["-n", "5", "--temp", "0.25", "--top-p", "0.5", "--seed", "7", "--stop", r"\n"]
    assert run(str(model), "-p", "hi", *options)[0] == 0
    assert run(str(model), "-p", "hi", "--chat", *options, "--stop", "Q:")[0] == 0
    assert run(str(model), "-p", "hi")[0] == 0
    assert seen == [
        ("generate", Sampling(5, 0.25, 0.5, 7, ("\n",))),
        ("converse", Sampling(5, 0.25, 0.5, 7, ("\n", "Q:"))),
        ("generate", Sampling()),  # the command's defaults are the library's
    ]
