"""The flash-attention setting: one value, from --flash-attn or GGUFKIT_FLASH_ATTN, reaches every
llama.cpp command line ggufkit builds and is recorded in the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.core.errors import UsageError
from ggufkit.evaluate import ppl, speed
from ggufkit.llamacpp import attention
from ggufkit.llamacpp.runner import ToolResult

BENCH_JSON = [
    {"n_prompt": 16, "n_gen": 0, "n_threads": 2, "avg_ts": 100.0, "stddev_ts": 1.0,
     "samples_ts": [100.0], "flash_attn": 0},
    {"n_prompt": 0, "n_gen": 8, "n_threads": 2, "avg_ts": 10.0, "stddev_ts": 0.1,
     "samples_ts": [10.0], "flash_attn": -1},
]  # fmt: skip


def test_default_is_llama_cpp_auto_resolved_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(attention.ENV, raising=False)
    assert attention.current_flash_attn() == "auto"
    assert attention.fa_args() == ["-fa", "auto"]
    assert attention.flash_attn_type() == -1  # LLAMA_FLASH_ATTN_TYPE_AUTO
    assert attention.resolved_flash_attn() == "on"
    with attention.use_flash_attn("off"):
        assert attention.fa_args() == ["-fa", "off"]
        assert attention.flash_attn_type() == 0
        assert attention.resolved_flash_attn() == "off"
    assert attention.current_flash_attn() == "auto"  # restored


def test_a_bad_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(attention.ENV, "sometimes")
    with pytest.raises(UsageError, match="GGUFKIT_FLASH_ATTN"):
        attention.current_flash_attn()


def test_resolution_is_read_from_llama_cpp_logs() -> None:
    assert attention.resolved_from_log("resolve_fused_ops: Flash Attention enabled") == "on"
    disabled = "resolve_fused_ops: Flash Attention not supported, set to disabled"
    assert attention.resolved_from_log(disabled) == "off"
    assert attention.resolved_from_log("nothing about it") is None


def test_llama_perplexity_gets_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ppl, "find_tool", lambda name: Path(f"/bin/{name}"))
    with attention.use_flash_attn("on"):
        args = ppl._common_args(Path("m.gguf"), 128, None)
    assert args[args.index("-fa") + 1] == "on"


def fake_bench(monkeypatch: pytest.MonkeyPatch, seen: list[list[str]]) -> None:
    def run_tool(args: list[str], **_: Any) -> ToolResult:
        seen.append([str(a) for a in args])
        return ToolResult(seen[-1], 0, json.dumps(BENCH_JSON), Path("log"), 0.1)

    monkeypatch.setattr(speed, "find_tool", lambda name: Path(f"/bin/{name}"))
    monkeypatch.setattr(speed, "read_gguf", lambda *a, **k: None)
    monkeypatch.setattr(speed, "run_tool", run_tool)


def test_bench_option_reaches_llama_bench_and_its_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []
    fake_bench(monkeypatch, seen)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    result = CliRunner().invoke(cli, ["bench", str(model), "--flash-attn", "off", "--json"])
    assert result.exit_code == 0, result.output
    assert seen[0][seen[0].index("-fa") + 1] == "off"
    tests = json.loads(result.stdout)["tests"]
    assert [t["flash_attn"] for t in tests] == ["off", "on"]  # -1 (auto) is on for the CPU
    assert attention.current_flash_attn() == "auto"  # the option did not leak past the command


class _Stop(Exception):
    pass


def test_auto_in_a_cache_key_is_what_llama_cpp_chose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a GPU, "auto" may resolve to off (a head size or type the device cannot run fused): the
    sequential eval's cache key names the kernel a context for the model chose, asked of
    llama.cpp (faked here), not a fixed rule; on the CPU it is on without asking."""
    from ggufkit.evaluate.sequential import estimator
    from ggufkit.evaluate.sequential.chunkcache import ChunkCache, chunk_key
    from ggufkit.evaluate.sequential.chunkeval import Tokens
    from ggufkit.llamacpp import attention_probe

    asked: list[str] = []

    def probe(func: Any, model: str, **kwargs: Any) -> str:
        asked.append(model)
        return "off"

    monkeypatch.setattr(attention_probe, "run_isolated", probe)
    monkeypatch.delenv(attention.ENV, raising=False)
    monkeypatch.setenv("GGUFKIT_DEVICE", "cpu")
    assert attention_probe.flash_attn_used("m.gguf") == "on" and asked == []
    monkeypatch.setenv("GGUFKIT_DEVICE", "gpu")
    assert attention_probe.flash_attn_used("m.gguf") == "off" and asked == ["m.gguf"]
    with attention.use_flash_attn("on"):
        assert attention_probe.flash_attn_used("m.gguf") == "on" and len(asked) == 1

    chunks = [[1, 5, 6, 7], [1, 8, 9, 10]]
    monkeypatch.setattr(estimator.chunkeval, "tokenize", lambda m, c: Tokens([], 1))
    monkeypatch.setattr(estimator.chunkeval, "cut", lambda tokens, ctx: chunks)
    monkeypatch.setattr(estimator, "sha256_file", lambda path: "sha-" + Path(path).name)
    seen: list[str] = []

    def score(base: Path, jobs: Any, **kwargs: Any) -> None:
        job = next(job for job in jobs if job is not None)
        seen.append(job.base_key)
        raise _Stop

    monkeypatch.setattr(estimator.chunkeval, "score_chunks", score)
    with pytest.raises(_Stop):
        estimator.run_sequential(
            tmp_path / "base.gguf",
            [tmp_path / "q.gguf"],
            tmp_path / "corpus.txt",
            ctx=4,
            target=0.01,
            cache=ChunkCache(tmp_path / "cache"),
        )
    (key,) = seen
    assert key in {_base_key(chunk_key, c, "off") for c in chunks}
    assert key not in {_base_key(chunk_key, c, "on") for c in chunks}


def _base_key(chunk_key: Any, chunk: list[int], fa: str) -> str:
    return chunk_key("base", "sha-base.gguf", "4", f"fa={fa}/v2", tokens=chunk)


def test_the_log_router_keeps_what_auto_resolved_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ggufkit.llamacpp import bindings

    monkeypatch.setenv("GGUFKIT_HOME", str(tmp_path))
    router = bindings._LlamaLog()
    assert router.flash_attn is None
    router(bindings.LOG_INFO, b"llama_context: flash_attn = auto\n", None)
    assert router.flash_attn is None
    line = b"resolve_fused_ops: Flash Attention not supported, set to disabled\n"
    router(bindings.LOG_WARN, line, None)
    assert router.flash_attn == "off"
    router(bindings.LOG_INFO, b"resolve_fused_ops: Flash Attention enabled\n", None)
    assert router.flash_attn == "on"


@pytest.mark.needs_llamacpp
def test_the_probe_reads_a_real_contexts_decision(tiny_llama_f16_gguf: Path) -> None:
    """On the CPU llama.cpp itself says auto is on: the probe hears it from a real context."""
    from ggufkit.llamacpp.attention_probe import _probe_here
    from ggufkit.llamacpp.isolate import run_isolated

    found = run_isolated(_probe_here, str(tiny_llama_f16_gguf), what="probing flash attention")
    assert found == "on"
