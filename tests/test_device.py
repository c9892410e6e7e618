"""GPU builds and offload: one -ngl for every llama.cpp tool and the bindings; configure args."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import UsageError
from ggufkit.llamacpp import device, layout
from ggufkit.llamacpp.cpu import CpuInfo


class Captured(Exception):
    pass


@pytest.fixture(scope="module")
def f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ggufkit.convert import convert
    from ggufkit.data import embedded_model

    out = tmp_path_factory.mktemp("device") / "tiny-llama-F16.gguf"
    convert(embedded_model("tiny-llama"), out, outtype="f16")
    return out


def test_gpu_layers_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(device.ENV, raising=False)
    assert device.current_device() == "cpu" and device.ngl_args() == ["-ngl", "0"]
    with device.use_device("gpu"):
        assert device.gpu_layers() == device.ALL_LAYERS
        assert device.ngl_args() == ["-ngl", str(device.ALL_LAYERS)]
    assert device.ENV not in __import__("os").environ  # restored
    monkeypatch.setenv(device.ENV, "tpu")
    with pytest.raises(UsageError, match="not a device"):
        device.current_device()


def _offload_seen(f16: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """-ngl as llama-perplexity, llama-bench and llama-imatrix get it; n_gpu_layers as the
    bindings get it for generation and for logit parity."""
    from ggufkit.data import default_corpus
    from ggufkit.evaluate import ppl, speed
    from ggufkit.inference import generate
    from ggufkit.llamacpp import bindings, runner
    from ggufkit.llamacpp import build as build_module
    from ggufkit.quantize import imatrix

    seen: dict[str, int] = {}

    def tool_args(name: str) -> Any:
        def fake_run_tool(args: list[Any], **kwargs: Any) -> None:
            argv = [str(a) for a in args]
            seen[name] = int(argv[argv.index("-ngl") + 1])
            raise Captured

        return fake_run_tool

    class FakeLlama:
        def __init__(self, **kwargs: Any) -> None:
            seen[self.name] = kwargs["n_gpu_layers"]
            raise Captured

    fake = SimpleNamespace(Llama=lambda **kw: type("L", (FakeLlama,), {"name": which})(**kw))
    monkeypatch.setattr(ppl, "find_tool", lambda name: Path(name))
    monkeypatch.setattr(speed, "find_tool", lambda name: Path(name))
    monkeypatch.setattr(build_module, "find_tool", lambda name: Path(name))
    monkeypatch.setattr(ppl, "run_tool", tool_args("llama-perplexity"))
    monkeypatch.setattr(speed, "run_tool", tool_args("llama-bench"))
    monkeypatch.setattr(runner, "run_tool", tool_args("llama-imatrix"))
    monkeypatch.setattr(imatrix, "_check_enough_tokens", lambda *args: None)
    monkeypatch.setattr(generate, "load_llama_cpp", lambda: fake)
    monkeypatch.setattr(bindings, "load_llama_cpp", lambda: fake)
    with pytest.raises(Captured):
        ppl.perplexity(f16, f16, ctx=64)
    with pytest.raises(Captured):
        speed.benchmark(f16, n_prompt=8, n_gen=0)
    with pytest.raises(Captured):
        imatrix.compute_imatrix(
            f16, default_corpus(), output=f16.with_suffix(".imatrix"), ctx_size=64
        )
    which = "generate"
    with pytest.raises(Captured):
        generate._open(f16, chat=False, ctx=64, threads=1, seed=0, max_tokens=4)
    which = "parity"
    from ggufkit.inference.parity import open_gguf

    with pytest.raises(Captured), open_gguf(f16):
        pass
    return seen


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_every_tool_and_the_bindings_get_the_same_offload(
    name: device.Device, f16: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with device.use_device(name):
        seen = _offload_seen(f16, monkeypatch)
    expected = 0 if name == "cpu" else device.ALL_LAYERS
    names = {"llama-perplexity", "llama-bench", "llama-imatrix", "generate", "parity"}
    assert seen == dict.fromkeys(names, expected)


def _fake_build(monkeypatch: pytest.MonkeyPatch, **options: object) -> None:
    from ggufkit.llamacpp import build as build_module

    info = SimpleNamespace(
        options={"cuda": False, "metal": None, "extra_cmake_args": [], **options},
        platform="linux-x86_64",
    )
    monkeypatch.setattr(build_module, "current_build", lambda **kw: info)


def test_device_gpu_on_a_cpu_build_is_a_usage_error(
    f16: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(monkeypatch)
    result = CliRunner().invoke(cli, ["bench", str(f16), "--device", "gpu"])
    assert result.exit_code == 2
    assert "no GPU backend" in result.output and "--cuda" in result.output


def test_device_gpu_reaches_llama_bench(f16: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggufkit.evaluate import speed

    _fake_build(monkeypatch, cuda=True)
    seen: list[str] = []

    def fake_run_tool(args: list[Any], **kwargs: Any) -> None:
        seen.extend(str(a) for a in args)
        raise Captured

    monkeypatch.setattr(speed, "find_tool", lambda name: Path(name))
    monkeypatch.setattr(speed, "run_tool", fake_run_tool)
    result = CliRunner().invoke(cli, ["bench", str(f16), "--device", "gpu"])
    assert result.exit_code != 0 and seen, result.output
    assert seen[seen.index("-ngl") + 1] == str(device.ALL_LAYERS)
    assert device.ENV not in __import__("os").environ  # the command's setting ends with it


def test_which_builds_have_a_gpu_backend() -> None:
    has = device.has_gpu_backend
    assert not has({"cuda": False, "metal": None, "extra_cmake_args": []}, "linux-x86_64")
    assert has({"cuda": True}, "linux-x86_64")
    assert has({"metal": None}, "darwin-arm64") and not has({"metal": False}, "darwin-arm64")
    assert has({"extra_cmake_args": ["-DGGML_VULKAN=ON"]}, "win32-amd64")


# --- configure arguments of GPU builds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "present", "absent"),
    [
        (layout.BuildOptions(cuda=True), ["-DGGML_CUDA=ON"], ["GGML_METAL"]),
        (layout.BuildOptions(metal=True), ["-DGGML_METAL=ON"], ["GGML_CUDA"]),
        (layout.BuildOptions(metal=False), ["-DGGML_METAL=OFF"], ["GGML_CUDA"]),
        (layout.BuildOptions(), [], ["GGML_CUDA", "GGML_METAL"]),
    ],
)
def test_gpu_configure_arguments(
    tmp_path: Path, options: layout.BuildOptions, present: list[str], absent: list[str]
) -> None:
    for platform in ("linux", "darwin", "win32"):
        args = layout.configure_args(
            tmp_path, tmp_path / "b", options, cpu=CpuInfo("x86_64", frozenset()), platform=platform
        )
        assert all(flag in args for flag in present)
        assert not [a for a in args if any(word in a for word in absent)]


@pytest.mark.parametrize(
    ("flag", "expected"), [("--cuda", "-DGGML_CUDA=ON"), ("--metal", "-DGGML_METAL=ON")]
)
def test_build_dry_run_shows_the_gpu_flags(
    flag: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from ggufkit.cli import build as build_cli

    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    monkeypatch.setattr(build_cli, "build_and_test", lambda *a, **k: pytest.fail("it built"))
    result = CliRunner().invoke(cli, ["build", flag, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert expected in result.output.split() and "-S" in result.output
    result = CliRunner().invoke(cli, ["build", flag, "--dry-run", "--json"])
    argv = json.loads(result.output)
    assert expected in argv and argv[argv.index("-B") + 1].startswith(str(tmp_path))
