"""Chat templates compiled and rendered in a child process under limits.

A chat template is code from a file (a GGUF's ``tokenizer.chat_template``, a checkpoint's
``tokenizer_config.json``, ``--chat-template FILE``). Jinja's sandbox stops attribute tricks but
not a template computing ``'A' * 300000000`` (folded into a constant when it is compiled) or
nested ``range(100000)`` loops. So ggufkit never compiles or renders one in its own process:
:class:`TemplateSandbox` keeps one child (``_template_child.py``) per run, reused for every
message, and

- caps the child's memory: RLIMIT_AS where the OS enforces it, and everywhere a watchdog that
  kills the child when its resident memory passes the cap (psutil);
- kills it at a deadline per request;
- bounds the rendered text;

and turns each into an :class:`InputError` naming the template's source. Limits:
``GGUFKIT_TEMPLATE_MEMORY`` (MiB, default 1024), ``GGUFKIT_TEMPLATE_SECONDS`` (default 10),
``GGUFKIT_TEMPLATE_MAX_OUTPUT`` (characters, default 16 Mi).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from ggufkit.core.env import positive_number
from ggufkit.core.errors import InputError

CHILD = Path(__file__).with_name("_template_child.py")
# A conversation every chat template should render: what convert test-renders a template with.
SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


class TemplateLimitError(InputError):
    """A chat template passed a limit (memory, time, output) or the sandbox stopped it."""


POLL_SECONDS = 0.02


class TemplateSandbox:
    """``with TemplateSandbox("the chat template of m.gguf") as box: box.render(text, ctx)``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.memory = int(positive_number("GGUFKIT_TEMPLATE_MEMORY", 1024) * 1024 * 1024)
        self.seconds = positive_number("GGUFKIT_TEMPLATE_SECONDS", 10)
        self.max_output = int(positive_number("GGUFKIT_TEMPLATE_MAX_OUTPUT", 16 * 1024 * 1024))
        self._process: subprocess.Popen[str] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()

    def __enter__(self) -> TemplateSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, template: str) -> None:
        """Compile ``template``: a syntax error, or a limit passed, raises."""
        self._ask({"op": "compile", "template": template})

    def render(self, template: str, context: dict[str, Any]) -> str:
        """``template`` rendered with ``context`` (JSON-like values)."""
        return str(self._ask({"op": "render", "template": template, "context": context})["text"])

    def test_render(self, template: str, bos_token: str = "<s>", eos_token: str = "</s>") -> None:
        """Compile ``template`` and render :data:`SAMPLE` with it: a limit passed raises
        :class:`TemplateLimitError`, a syntax error :class:`InputError`; the template's own
        refusal of the sample (``raise_exception``) is its business and passes."""
        self.check(template)
        context = {
            "messages": SAMPLE,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": True,
        }
        try:
            self.render(template, context)
        except TemplateLimitError:
            raise
        except InputError:
            pass

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    # -- the child ------------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._answers = queue.Queue()
        process = subprocess.Popen(
            [sys.executable, str(CHILD), str(self.memory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            encoding="utf-8",
            errors="replace",
        )
        answers = self._answers

        def pump(stream: IO[str]) -> None:
            for line in stream:
                answers.put(line)
            answers.put(None)

        assert process.stdout is not None
        threading.Thread(target=pump, args=(process.stdout,), daemon=True).start()
        self._process = process
        return process

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        import psutil

        process = self._start()
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps({**request, "max_output": self.max_output}) + "\n")
            process.stdin.flush()
        except OSError:
            raise self._error("died", self._death()) from None
        watched = psutil.Process(process.pid)
        deadline = time.monotonic() + self.seconds
        while True:
            try:
                line = self._answers.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                pass
            try:
                resident = watched.memory_info().rss
            except psutil.Error:
                resident = 0
            if resident > self.memory:
                self._kill()
                raise self._error("memory", "")
            if time.monotonic() > deadline:
                self._kill()
                raise self._error("time", "")
        if line is None:  # died: crashed, or killed (by the OS for its memory, or by someone)
            raise self._error("died", self._death())
        answer: dict[str, Any] = json.loads(line)
        if not answer["ok"]:
            if answer["kind"] == "memory":
                self._kill()
            raise self._error(answer["kind"], answer["message"])
        return answer

    def _death(self) -> str:
        """How the child ended (it has, or is killed now): its signal or exit code."""
        process, self._process = self._process, None
        if process is None:
            return "it had stopped"
        try:
            code = process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return "it stopped answering and was killed"
        if code >= 0:
            return f"it exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        # SIGKILL is what the Linux out-of-memory killer sends, though not only it
        maybe = ", perhaps by the system for lack of memory" if name == "SIGKILL" else ""
        return f"it was killed by {name}{maybe}"

    def _error(self, kind: str, detail: str) -> InputError:
        mib = self.memory // (1024 * 1024)
        limits = {
            "memory": (
                f"{self.source} needs more than {mib} MiB to render",
                "GGUFKIT_TEMPLATE_MEMORY=MiB",
            ),
            "time": (
                f"{self.source} did not render within {self.seconds:g} s (a loop that never ends?)",
                "GGUFKIT_TEMPLATE_SECONDS=SECONDS",
            ),
            "output": (
                f"{self.source} renders more than {self.max_output} characters",
                "GGUFKIT_TEMPLATE_MAX_OUTPUT=CHARACTERS",
            ),
            "security": (f"{self.source} was stopped by the sandbox: {detail}", None),
            "died": (f"the process rendering {self.source} died: {detail}", None),
        }
        if kind in limits:
            message, setting = limits[kind]
            more = f"; if you trust it, raise the limit with {setting}" if setting else ""
            return TemplateLimitError(
                message,
                hint="a chat template is code from the model's files: use a template you trust "
                f"(when converting, choose a FastChat format or a Jinja file){more}",
            )
        if kind == "syntax":
            return InputError(
                f"{self.source} is not a valid Jinja template: {detail}",
                hint="fix the template, or choose a FastChat format instead",
            )
        return InputError(f"{self.source} failed to render: {detail}", hint=None)
