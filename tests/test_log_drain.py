"""The patched llama-perplexity never loses its last lines (vendor/patches/0001).

Unpatched, its logger (a leaked singleton with a worker thread) dropped the queued final lines in
about 1 run in 10 (2 of 20 measured), to a file or a pipe alike. 200 runs without a loss would
happen by chance with probability 0.9**200 < 1e-9. Time budget: about 2 minutes on a quiet
2-core machine (0.6 s a run); the timeout stops it at 10 on a machine loaded several times over.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

RUNS = 200


@pytest.mark.slow
@pytest.mark.needs_llamacpp
@pytest.mark.timeout(600)
def test_two_hundred_runs_all_end_with_the_final_estimate(tmp_path: Path) -> None:
    from ggufkit.convert import convert
    from ggufkit.data import default_corpus, embedded_model
    from ggufkit.llamacpp.build import find_tool

    model = tmp_path / "tiny-llama-F16.gguf"
    convert(embedded_model("tiny-llama"), model, outtype="f16")
    args = [str(find_tool("llama-perplexity")), "-m", str(model), "-f", str(default_corpus())]
    args += ["-c", "32", "--chunks", "1", "-t", "2"]
    lost = []
    for run in range(RUNS):
        if run % 2:  # to a pipe
            output = subprocess.run(args, capture_output=True, text=True, check=True).stderr
        else:  # to a file, as ggufkit's logs are written
            log = tmp_path / "run.log"
            with open(log, "wb") as sink:
                subprocess.run(args, stdout=sink, stderr=subprocess.STDOUT, check=True)
            output = log.read_text(encoding="utf-8", errors="replace")
        if "Final estimate: PPL =" not in output:
            lost.append(run)
    assert lost == [], f"{len(lost)} of {RUNS} runs lost their final lines: {lost[:10]}"
