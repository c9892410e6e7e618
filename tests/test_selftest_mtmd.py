"""The build's self-test covers llama.cpp's multimodal library: llama-mtmd-cli reads a picture
with the embedded tiny-llama and a projector written by gguf-py (no torch), and the self-test
fails when the tool crashes, or answers without encoding the picture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ggufkit import selftest
from ggufkit.core.errors import BuildError
from ggufkit.inference import image_chat
from ggufkit.llamacpp import build as build_module

POSIX_ONLY = pytest.mark.posix_only


def test_the_picture_is_a_png_of_the_gradient(tmp_path: Path) -> None:
    from PIL import Image

    path = selftest.write_picture(tmp_path / "p.png", size=20)
    with Image.open(path) as image:
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (20, 20))
        assert image.getpixel((3, 7)) == (15, 35, 10)


def test_the_projector_is_what_clip_reads(tmp_path: Path) -> None:
    from ggufkit.formats.gguf_reader import read_gguf

    path = selftest.write_projector(tmp_path / "mmproj.gguf", 256)
    meta = read_gguf(path, max_array_items=4).metadata
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == "mlp"
    assert meta["clip.vision.projection_dim"] == 256
    # what run --image checks of a projector holds for it too
    model = tmp_path / "m.gguf"
    from test_vision_run import write_gguf

    write_gguf(model, "llama", {"llama.embedding_length": 256})
    assert image_chat.check_pair(model, path) == path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model

    out = tmp_path_factory.mktemp("selftest") / "tiny-llama-F16.gguf"
    return convert(embedded_model("tiny-llama"), out, outtype="f16", engine="native").output


@pytest.mark.needs_mtmd
@pytest.mark.needs_llamacpp
def test_llama_mtmd_cli_reads_the_picture(tiny_llama: Path, tmp_path: Path) -> None:
    assert selftest.probe_mtmd(tiny_llama, tmp_path, 2) == "ok (16 image tokens)"


def stand_in(tmp_path: Path, body: str) -> Path:
    tool = tmp_path / "llama-mtmd-cli"
    tool.write_text(f"#!{sys.executable}\n{body}\n")
    tool.chmod(0o755)
    return tool


@POSIX_ONLY
@pytest.mark.needs_llamacpp
def test_an_answer_without_the_picture_fails(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = stand_in(tmp_path, "print('a cat')")
    monkeypatch.setattr(image_chat, "find_mtmd_cli", lambda: tool)
    with pytest.raises(BuildError, match="into none image tokens, not 16"):
        selftest.probe_mtmd(tiny_llama, tmp_path, 2)


@POSIX_ONLY
@pytest.mark.needs_mtmd
@pytest.mark.needs_llamacpp
@pytest.mark.slow
def test_the_selftest_runs_it_and_names_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = selftest.run_selftest(build_module.current_build(), threads=2, bindings=False)
    assert passed.ok, passed
    assert passed.mtmd == "ok (16 image tokens)" and "mtmd ok (16 image tokens)" in passed.summary()

    tool = stand_in(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(image_chat, "find_mtmd_cli", lambda: tool)
    failed = selftest.run_selftest(build_module.current_build(), threads=2, bindings=False)
    assert not failed.ok and failed.signal == "SIGSEGV"
    assert failed.step == "llama-mtmd-cli reading a picture (libmtmd)"
