"""`run --image --chat`: a conversation about one picture through llama-mtmd-cli's own chat.

The turn checks and the reading of the tool's log need no build. The conversation itself runs the
built llama-mtmd-cli on the tiny MiniCPM-V 4.6 (greedy): its first answer must be the one-question
answer (the same tool, the same prompt), its second must differ from the answer to the second
question asked alone about the picture (the first turn is in its context), and the picture must be
encoded once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_vision
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import UsageError
from ggufkit.inference.image_turns import check_turns, split_answers

MARK = "<<mark>>"


def test_turns_are_single_lines_and_not_commands() -> None:
    assert check_turns(["  What is it? ", "And then"]) == ["What is it?", "And then"]
    for turns, message in [
        ([], "at least one user turn"),
        (["two\nlines"], "is one line"),
        (["   "], "empty"),
        (["/image other.png"], "its command /image"),
        (["/quit"], "its command /quit"),
    ]:
        with pytest.raises(UsageError, match=message):
            check_turns(turns)
    assert check_turns(["/imagery is a word"]) == ["/imagery is a word"]


def transcript(*answers: str, system: bool = False, loaded: bool = True) -> str:
    """A log file as llama-mtmd-cli writes it with --log-prefix --log-timestamps."""
    text = "0.00.001.000 I main: loading model\n"
    if system:
        text += f"{MARK}\n\n"
    text += "\n Running in chat mode, available commands:\n\n> "
    text += "/tmp/p.png image loaded\n\n> " if loaded else ""
    for index, answer in enumerate(answers):
        text += f"{MARK}\n"
        if index == 0:
            text += "0.00.273.488 I encoding mtmd batch, n_chunks = 1\n"
        text += f"\n{answer}\n> "
    return text + "\n\n0.00.900.000 I llama_perf_context_print: load time\n"


def test_answers_are_read_between_the_markers() -> None:
    answers = ["A cat.\n> quoted, as markdown does", "It is black."]
    assert split_answers(transcript(*answers), MARK, 2, system=False) == answers
    assert split_answers(transcript(*answers, system=True), MARK, 2, system=True) == answers
    # a turn left unanswered, or the picture not loaded: no answers
    assert split_answers(transcript(answers[0]), MARK, 2, system=False) is None
    assert split_answers(transcript(*answers, loaded=False), MARK, 2, system=False) is None


def test_cli_refusals(tmp_path: Path) -> None:
    from test_vision_run import model, projector

    text = model(tmp_path, pair=projector(tmp_path).name)
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    runner = CliRunner()
    cases = [
        (["--chat", "-p", "a\nb"], "is one line"),
        (["--chat", "-p", "/clear"], "its command /clear"),
        (["--stop", "x", "-p", "a"], "--stop does not apply to --image"),
        (["--system", "Be brief.", "-p", "a"], "--system needs --chat"),
        (["-p", "a", "-p", "b"], "several -p need --chat"),
    ]
    for extra, message in cases:
        result = runner.invoke(cli, ["run", str(text), "--image", str(picture), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)


@pytest.fixture(scope="module")
def minicpmv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_vision_run import converted

    return converted(tmp_path_factory, "minicpmv")


def ask(model: Path, picture: Path, *args: str) -> dict[str, object]:
    common = ["-n", "8", "--temp", "0", "--seed", "1", "--json"]
    result = CliRunner().invoke(cli, ["run", str(model), "--image", str(picture), *args, *common])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.mark.needs_mtmd
@pytest.mark.needs_torch
@pytest.mark.slow
def test_two_turns_about_one_picture(minicpmv: Path, tmp_path: Path) -> None:
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    first, second = "What is in the picture?", "Say more about it."
    chat = ask(minicpmv, picture, "--chat", "-p", first, "-p", second)
    turns = chat["turns"]
    assert isinstance(turns, list) and [t["prompt"] for t in turns] == [first, second]
    alone = [ask(minicpmv, picture, "-p", question)["answer"] for question in (first, second)]
    assert turns[0]["answer"] == alone[0]  # the first turn is the one-question run
    assert turns[1]["answer"] and turns[1]["answer"] != alone[1]  # the first turn is context
    assert chat["answer"] == turns[1]["answer"]
    log = Path(str(chat["log_path"])).read_text(encoding="utf-8")
    assert log.count("mtmd batch encoding done") == 1  # the picture is encoded once


@pytest.mark.needs_mtmd
@pytest.mark.needs_torch
@pytest.mark.slow
def test_turns_piped_in_and_a_system_message(minicpmv: Path, tmp_path: Path) -> None:
    picture = tiny_vision.make_picture(tmp_path / "p.png")
    args = ["run", str(minicpmv), "--image", str(picture), "--chat", "--echo", "-n", "4",
            "--temp", "0", "--system", "Be brief."]  # fmt: skip
    result = CliRunner().invoke(cli, args, input="What is it?\n\nWhy?\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "> What is it?" and "> Why?" in lines[1:]
