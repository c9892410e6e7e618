"""The native engine reads the model card and generation_config.json for upstream's general.*
keys: what a hostile download puts there fails as an InputError naming the file, and a
legitimate card still gives its keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufkit.convert import general_meta
from ggufkit.core.errors import InputError

COUNTS = (1_000, 1_000, 0, 0)


def card(tmp_path: Path, text: str) -> Path:
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    return tmp_path


def test_a_plain_card_gives_its_license(tmp_path: Path) -> None:
    model = card(tmp_path, "---\nlicense: apache-2.0\nlanguage: [en]\n---\n# hello\n")
    metadata = general_meta.upstream_metadata(model, COUNTS)
    assert metadata.license == "apache-2.0"
    assert metadata.languages == ["en"]


def test_broken_front_matter_names_the_card(tmp_path: Path) -> None:
    model = card(tmp_path, "---\nlicense: [unclosed\n---\n")
    with pytest.raises(InputError, match="README.md"):
        general_meta.upstream_metadata(model, COUNTS)


def test_front_matter_nested_past_the_parser_names_the_card(tmp_path: Path) -> None:
    model = card(tmp_path, "---\nx: " + "[" * 20_000 + "]" * 20_000 + "\n---\n")
    with pytest.raises(InputError, match="README.md"):
        general_meta.upstream_metadata(model, COUNTS)


def test_a_huge_card_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(general_meta, "MAX_MODEL_CARD_BYTES", 1024)
    model = card(tmp_path, "---\nlicense: mit\n---\n" + "x" * 4096)
    with pytest.raises(InputError, match="README.md"):
        general_meta.upstream_metadata(model, COUNTS)


def test_generation_config_nested_past_the_parser_is_refused(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="generation_config.json"):
        general_meta.upstream_metadata(tmp_path, COUNTS)
