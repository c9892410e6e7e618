"""`ggufkit build` through real CMake on a stand-in source tree (seconds, not minutes).

The stand-in defines the same targets as llama.cpp, so configure, compile, discovery, the stamp,
the no-op second run and the lock between concurrent builds are all exercised for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufkit.llamacpp.layout import TOOLS
from ggufkit.llamacpp.patches import patches_digest
from ggufkit.llamacpp.source import STAMP, read_pin, source_stamp

CMAKELISTS = """cmake_minimum_required(VERSION 3.14)
project(standin C)
add_library(llama SHARED llama.c)
foreach(tool {tools})
  add_executable(${{tool}} tool.c)
  target_link_libraries(${{tool}} llama)
endforeach()
set_target_properties(llama {tools} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${{CMAKE_BINARY_DIR}}/bin
                      LIBRARY_OUTPUT_DIRECTORY ${{CMAKE_BINARY_DIR}}/bin)
"""


@pytest.fixture
def standin_env(tmp_path: Path) -> dict[str, str]:
    source = tmp_path / "src"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(CMAKELISTS.format(tools=" ".join(TOOLS)))
    (source / "llama.c").write_text("int llama_standin(void) { return 42; }\n")
    (source / "tool.c").write_text(
        '#include <stdio.h>\nint llama_standin(void);\nint main(void) { printf("%d\\n", llama_standin()); return 0; }\n'
    )
    (source / STAMP).write_text(source_stamp(read_pin(), patches_digest()) + "\n")
    return {
        **os.environ,
        "GGUFKIT_HOME": str(tmp_path / "home"),
        "GGUFKIT_LLAMA_CPP_SRC": str(source),
        "GGUFKIT_NO_PROGRESS": "1",
    }


def _build(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        # Stand-in tools cannot run the self-test (tests/test_build_cpu.py covers it).
        [
            sys.executable,
            "-m",
            "ggufkit",
            "build",
            "--no-bindings",
            "--no-self-test",
            "--json",
            "-j",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_builds_share_one_cache(standin_env: dict[str, str]) -> None:
    first, second = _build(standin_env), _build(standin_env)
    results = []
    for process in (first, second):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    # One of them compiled; the other waited on the lock and found the stamp.
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["tools"] == results[1]["tools"]
    quantize = Path(results[0]["tools"]["llama-quantize"])
    assert (
        subprocess.run([quantize], capture_output=True, text=True, check=True).stdout.strip()
        == "42"
    )

    again = _build(standin_env)
    out, _ = again.communicate(timeout=60)
    assert json.loads(out)["cached"] is True
