"""Hostile inputs: the JSON files of a checkpoint that are read only for a hint (the chat
template, a size estimate, the remote-code check) go through ``read_json``'s limits. A file the
parser cannot take counts as absent, as a damaged one always did, instead of escaping as a
RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufkit.bnb.loading import check_remote_code
from ggufkit.convert.chat_templates import checkpoint_template
from ggufkit.workspace.batch.graph import f16_estimate
from ggufkit.workspace.batch.plan import ModelSpec

DEEP = 100_000  # far past the parser's recursion limit
HOSTILE = {
    "deep": '{"chat_template": ' + "[" * DEEP + "]" * DEEP + "}",
    "long-int": '{"chat_template": ' + "7" * 5000 + "}",
    "list": "[1, 2, 3]",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_tokenizer_config_gives_no_chat_template(tmp_path: Path, kind: str) -> None:
    (tmp_path / "tokenizer_config.json").write_text(HOSTILE[kind])
    assert checkpoint_template(tmp_path) is None
    (tmp_path / "chat_template.json").write_text('{"chat_template": "{{ x }}"}')
    assert checkpoint_template(tmp_path) == "{{ x }}"  # the next file is still read


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_config_leaves_the_f16_estimate(tmp_path: Path, kind: str) -> None:
    (tmp_path / "model.safetensors").write_bytes(bytes(1000))
    (tmp_path / "config.json").write_text(HOSTILE[kind])
    assert f16_estimate(ModelSpec(source=str(tmp_path), name="m")) == 1000  # f16 assumed
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    assert f16_estimate(ModelSpec(source=str(tmp_path), name="m")) == 500


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_tokenizer_config_asks_for_no_remote_code(tmp_path: Path, kind: str) -> None:
    (tmp_path / "tokenizer_config.json").write_text(HOSTILE[kind])
    assert check_remote_code(tmp_path, {}, trust=False) == []
    assert check_remote_code(tmp_path, {"auto_map": {"AutoModel": "m.M"}}, trust=True)
