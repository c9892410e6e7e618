"""llama.cpp's own log lines go to ggufkit's log folder and reach stderr only with -v; vocabulary
work makes no llama context (whose "n_ctx_train (0)" warning was a false alarm)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufkit.llamacpp import bindings

ROOT = Path(__file__).resolve().parent.parent
# What llama.cpp prints while loading a model; none of it may reach stderr without -v.
CHATTER = ("llama_model_loader", "llama_context", "load_tensors", "print_info", "n_ctx_train")


def test_levels_follow_the_pinned_ggml(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    router = bindings._LlamaLog()
    root = logging.getLogger("ggufkit")
    monkeypatch.setattr(root, "level", logging.INFO)  # ggufkit without -v
    router(bindings.LOG_WARN, b"llama_context: a warning\n", None)
    router(bindings.LOG_CONT, b"continued\n", None)
    router(bindings.LOG_DEBUG, b"debug detail\n", None)
    assert capsys.readouterr().err == ""
    assert router.path is not None
    assert router.path.read_text() == "llama_context: a warning\ncontinued\n"  # no debug lines
    monkeypatch.setattr(root, "level", logging.DEBUG)  # -v
    router(bindings.LOG_INFO, b"print_info: shown\n", None)
    assert capsys.readouterr().err == "print_info: shown\n"
    monkeypatch.setattr(root, "level", logging.NOTSET)  # a spawned child: the parent's level
    monkeypatch.setenv(bindings.LEVEL_ENV, str(logging.INFO))
    router(bindings.LOG_ERROR, b"an error line\n", None)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(bindings.LEVEL_ENV, str(logging.DEBUG))
    router(bindings.LOG_ERROR, b"an error line\n", None)
    assert capsys.readouterr().err == "an error line\n"
    assert router.path.read_text().count("an error line") == 2


def ggufkit(*args: str) -> subprocess.CompletedProcess[str]:
    """The console command in a process of its own: the llama.cpp children write to its real
    stderr, which CliRunner would not see."""
    return subprocess.run(
        [sys.executable, "-m", "ggufkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GGUFKIT_NO_PROGRESS": "1"},
        timeout=600,
        check=False,
    )


def chatter(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in CHATTER)]


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_verify_eval_and_run_keep_llama_cpp_quiet(
    tiny_llama_f16_gguf: Path, tiny_llama_gqa_dir: Path, corpus_path: Path, tmp_path: Path
) -> None:
    from ggufkit.quantize import quantize

    model = str(tiny_llama_f16_gguf)
    q8 = str(quantize(model, ["q8_0"], outdir=tmp_path)[0].output)
    commands = {
        "verify": ["verify", model, "--against", str(tiny_llama_gqa_dir), "--positions", "16"],
        "eval": [
            "eval",
            model,
            "-f",
            str(corpus_path),
            "--ctx",
            "64",
            "--chunks",
            "2",
            "--no-speed",
        ],
        "eval --target-error": [
            *("eval", model, q8, "-f", str(corpus_path), "--ctx", "64", "--no-speed"),
            *("--target-error", "50%", "--min-chunks", "2"),
        ],
        "run": ["run", model, "-p", "Once upon", "-n", "4", "--temp", "0"],
    }
    for name, args in commands.items():
        quiet = ggufkit(*args)
        assert quiet.returncode == 0, (name, quiet.stderr[-3000:])
        assert chatter(quiet.stderr) == [], name
        loud = ggufkit("-v", *args)
        assert loud.returncode == 0, (name, loud.stderr[-3000:])
        lines = chatter(loud.stderr)
        assert any(line.startswith("llama_model_loader") for line in lines), (name, lines[:5])
        # a vocabulary-only load makes no context: no false "training context overflow"
        assert not [line for line in lines if "n_ctx_train (0)" in line], name
