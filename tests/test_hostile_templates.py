"""Hostile inputs, the guards on chat templates (issue 26): a template is code from a file, so
ggufkit compiles and renders it only in a child process with a memory cap, a deadline and a
bounded output, and says which template failed, without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ggufkit.cli import cli

BOMB = "{{ bos_token }}{{ 'A' * 300000000 }}"  # folded into a 300 MB constant when compiled
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# Doubling a string in a namespace: no single operation is large, the memory is.
DOUBLING = (
    "{% set ns = namespace(x='A') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}"
    "{% endfor %}{{ ns.x }}"
)
ESCAPE = "{{ messages.__class__.__mro__ }}"  # stopped by Jinja's sandbox
HANG_GUARD_SECONDS = 300  # far above the limits the tests set: only a hang gets here


@pytest.fixture(autouse=True)
def _short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGUFKIT_TEMPLATE_SECONDS", "3")
    monkeypatch.setenv("GGUFKIT_TEMPLATE_MEMORY", "512")


def _invoke_guarded(args: list[str], stdin: str | None = None) -> Result:
    results: list[Result] = []

    def invoke() -> None:
        results.append(CliRunner().invoke(cli, args, input=stdin))

    worker = threading.Thread(target=invoke, daemon=True)
    worker.start()
    worker.join(HANG_GUARD_SECONDS)
    assert not worker.is_alive(), f"`ggufkit {' '.join(args)}` hung on a hostile chat template"
    return results[0]


def _refused(result: Result, *words: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert all(word in result.output for word in words), result.output


@pytest.mark.parametrize(
    ("template", "words"),
    [
        (BOMB, ("output limit",)),
        (LOOPS, ("did not render within 3 s", "GGUFKIT_TEMPLATE_SECONDS")),
        (DOUBLING, ("more than 512 MiB", "GGUFKIT_TEMPLATE_MEMORY")),
    ],
    ids=["constant", "loops", "doubling"],
)
def test_convert_refuses_a_template_file_that_passes_a_limit(
    tmp_path: Path, tiny_llama_dir: Path, template: str, words: tuple[str, ...]
) -> None:
    chat = tmp_path / "chat.jinja"
    chat.write_text(template, encoding="utf-8")
    out = tmp_path / "m.gguf"
    result = _invoke_guarded(
        ["convert", str(tiny_llama_dir), "-o", str(out), "--chat-template", str(chat)]
    )
    _refused(result, str(chat), *words)
    assert not out.exists()


def test_convert_auto_refuses_a_checkpoints_hostile_template(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    config = model / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    config.write_text(json.dumps({**data, "chat_template": LOOPS}), encoding="utf-8")
    out = tmp_path / "m.gguf"
    result = _invoke_guarded(["convert", str(model), "-o", str(out), "--chat-template", "auto"])
    _refused(result, "the chat template of the checkpoint", "did not render")
    assert not out.exists()


def test_a_normal_template_still_renders_in_the_sandbox() -> None:
    from ggufkit.convert.template_sandbox import TemplateSandbox

    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with TemplateSandbox("a test template") as sandbox:
        for _ in range(3):  # one child serves every message
            text = sandbox.render(template, {"messages": messages, "bos_token": "<s>"})
            assert text == "<s>user: hi\nassistant: yo\n"


def _with_template(source: Path, template: str, out: Path) -> Path:
    command = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force"]
    subprocess.run([*command, "--chat-template", template, str(source), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


@pytest.mark.needs_llamacpp
@pytest.mark.parametrize(
    ("template", "words"),
    [
        (BOMB, ("tokenizer.chat_template", "output limit")),
        (LOOPS, ("tokenizer.chat_template", "did not render within 3 s")),
        (ESCAPE, ("tokenizer.chat_template", "stopped by the sandbox")),
    ],
    ids=["constant", "loops", "sandbox"],
)
def test_run_chat_refuses_a_gguf_with_a_hostile_template(
    tmp_path: Path, tiny_llama_f16_gguf: Path, template: str, words: tuple[str, ...]
) -> None:
    model = _with_template(tiny_llama_f16_gguf, template, tmp_path / "hostile.gguf")
    result = _invoke_guarded(["run", str(model), "--chat", "-p", "hello", "-n", "2"])
    _refused(result, "hostile.gguf", *words)


@pytest.mark.posix_only
def test_a_renderer_that_dies_is_told_by_its_signal_not_as_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.convert import template_sandbox

    child = tmp_path / "dies.py"  # reads the request, then ends by a signal other than memory's
    child.write_text(
        "import os, signal, sys\nsys.stdin.readline()\nos.kill(os.getpid(), signal.SIGTERM)\n"
    )
    monkeypatch.setattr(template_sandbox, "CHILD", child)
    with (
        template_sandbox.TemplateSandbox("a test template") as sandbox,
        pytest.raises(template_sandbox.TemplateLimitError) as caught,
    ):
        sandbox.render("{{ 1 }}", {})
    assert "SIGTERM" in str(caught.value) and "MiB" not in str(caught.value)


def test_a_renderer_that_exits_is_told_by_its_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggufkit.convert import template_sandbox

    child = tmp_path / "exits.py"
    child.write_text("import sys\nsys.stdin.readline()\nsys.exit(3)\n")
    monkeypatch.setattr(template_sandbox, "CHILD", child)
    with (
        template_sandbox.TemplateSandbox("a test template") as sandbox,
        pytest.raises(template_sandbox.TemplateLimitError, match="exited with code 3"),
    ):
        sandbox.check("{{ 1 }}")


def test_closing_the_chat_sandbox_unsets_the_renderer(tmp_path: Path) -> None:
    from ggufkit.inference.chat_render import limit_chat_templates
    from ggufkit.llamacpp import chat_deferred

    sandbox = limit_chat_templates(tmp_path / "m.gguf", "{{ bos_token }}")
    try:
        assert chat_deferred.renderer is not None
        assert chat_deferred.renderer("{{ bos_token }}x", {"bos_token": "<s>"}) == "<s>x"
    finally:
        sandbox.close()
    assert chat_deferred.renderer is None  # a later chat does not revive the closed sandbox
