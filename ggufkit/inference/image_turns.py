"""``run --image --chat``: a conversation about one picture, in one run of ``llama-mtmd-cli``.

``llama-mtmd-cli`` without ``-p`` is a chat: it reads a line at a time from its standard input,
``/image PATH`` loads a picture into the next user turn, and every other line is a user turn,
formatted with the model's chat template and answered with the whole conversation so far in its
context (the picture is encoded once, in the first turn). ggufkit writes the turns to a file the
tool reads as its input, and finds each answer by a marker the tool logs before it evaluates a
message (upstream's ``MTMD_TEST_RESPONSE_MARKER``): what follows the marker up to the tool's next
``> `` prompt is the answer. The answers are read from the tool's log file, not its stdout: the
tool's line reader echoes each input line to stdout from the main thread while the log's own
thread may still be printing the end of the previous answer, so on stdout the two can mix. The
log file holds the log's messages alone, in order; its other lines carry a timestamp and a level
(``--log-prefix --log-timestamps``) and are dropped.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufkit.core.errors import ToolOutputError, UsageError
from ggufkit.inference.image_chat import (
    MTMD_CLI,
    TOOL_HINT,
    ImageChatResult,
    check_pair,
    check_picture,
    find_mtmd_cli,
    sampling_args,
)

MARKER_ENV = "MTMD_TEST_RESPONSE_MARKER"
PROMPT = "\n> "  # the tool's prompt, printed after each answer
_DIAGNOSTIC = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} [IWED] [^\n]*(\n|$)", re.M)
# Lines llama-mtmd-cli's chat reads as commands, not as user turns.
COMMANDS = ("/image", "/audio", "/video", "/clear", "/quit", "/exit")


@dataclass
class ImageConversation(ImageChatResult):
    """The answer (``answer``: the last turn's) and every turn with its answer."""

    turns: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        del data["answers"]
        data["turns"] = [
            {"prompt": t, "answer": a} for t, a in zip(self.turns, self.answers, strict=True)
        ]
        return data


def check_turns(turns: Sequence[str]) -> list[str]:
    """The user turns as the tool's chat reads them: one line each, none a chat command."""
    if not turns:
        raise UsageError("--image --chat needs at least one user turn (-p)")
    checked = []
    for turn in turns:
        if "\n" in turn or "\r" in turn:
            raise UsageError(
                f"a turn of --image --chat is one line; {turn!r} has several",
                hint="give each line as its own -p, or join the lines with spaces",
            )
        words = turn.strip().split(maxsplit=1)
        if not words:
            raise UsageError("an empty -p turn", hint="give each turn some text")
        if words[0] in COMMANDS:
            raise UsageError(
                f"the turn {turn!r} would be read by {MTMD_CLI} as its command {words[0]}",
                hint="reword the turn; the picture is given with --image",
            )
        checked.append(turn.strip())
    return checked


def image_conversation(
    model: Path,
    turns: Sequence[str],
    image: Path,
    *,
    mmproj: Path | None = None,
    system: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.8,
    seed: int | None = None,
    ctx: int | None = None,
    threads: int | None = None,
) -> ImageConversation:
    """Answer ``turns`` in order about ``image``, each with the conversation so far."""
    from ggufkit.llamacpp.runner import run_tool

    asked = check_turns(turns)
    mmproj = check_pair(model, mmproj)
    marker = f"<<ggufkit-turn-{secrets.token_hex(8)}>>"
    with tempfile.TemporaryDirectory(prefix="ggufkit-image-") as scratch:
        picture = _one_line_path(check_picture(image, Path(scratch)), Path(scratch))
        tool = find_mtmd_cli()
        script = Path(scratch) / "turns.txt"
        # A trailing space keeps a turn's last backslash from being read as a line continuation
        # (the tool strips the space).
        lines = [f"/image {picture}", *(f"{turn} " for turn in asked)]
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        transcript = Path(scratch) / "chat.log"
        args: list[str | Path] = [
            tool, "-m", model, "--mmproj", mmproj, "--log-file", transcript, "--log-prefix",
            "--log-timestamps", "--log-colors", "off",
            *sampling_args(max_tokens, temperature, seed, ctx, threads),
        ]  # fmt: skip
        if system is not None:
            args += ["-sys", system]
        result = run_tool(
            args, what=MTMD_CLI, env={MARKER_ENV: marker}, stdin=script,
            hint=TOOL_HINT,
        )  # fmt: skip
        text = transcript.read_bytes().decode("utf-8", errors="replace")
    answers = split_answers(text, marker, len(asked), system=system is not None)
    if answers is None:
        raise ToolOutputError(
            f"{MTMD_CLI} did not load the picture or did not answer each of the {len(asked)} turns",
            hint="see the log: llama.cpp's own message",
            log_path=result.log_path,
            tail=text[-2000:],
        )
    return ImageConversation(
        answers[-1], model, mmproj, image, result.seconds, result.log_path,
        turns=asked, answers=answers,
    )  # fmt: skip


def split_answers(log: str, marker: str, turns: int, *, system: bool) -> list[str] | None:
    """Each turn's answer in the tool's log file; None when there are not ``turns`` of them, or
    the tool did not say that it loaded the picture before the first turn.

    The marker is logged (on a line of its own) before each message is evaluated, the system
    message's included; the tool's next prompt follows each answer.
    """
    parts = _DIAGNOSTIC.sub("", log).split(marker + "\n")
    before, segments = parts[: 1 + system], parts[1 + system :]
    if len(segments) != turns or "image loaded" not in before[-1]:
        return None
    answers = []
    for segment in segments:
        end = segment.rfind(PROMPT)
        answers.append((segment if end < 0 else segment[:end]).strip())
    return answers


def _one_line_path(picture: Path, scratch: Path) -> Path:
    """``picture``, or a copy in ``scratch`` when its path would not survive the chat's line
    reading (line breaks, or spaces at either end)."""
    text = str(picture.absolute())
    if "\n" not in text and "\r" not in text and text == text.strip():
        return picture.absolute()
    copy = scratch / ("picture" + picture.suffix.strip())
    shutil.copyfile(picture, copy)
    return copy
