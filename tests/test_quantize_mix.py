"""What a quantized file really holds: the tensors' types, counted from the written file, and the
tensors that llama.cpp stored in a fallback type because their rows do not fit a k-quant's block
(a Q4_K_M of a 576-wide model is mostly Q5_0). llama.cpp's own log and gguf-py are the oracles."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggufkit.cli import cli
from ggufkit.evaluate.report import eval_table
from ggufkit.evaluate.results import EvalReport, ModelResult
from ggufkit.quantize.types import read_tensor_mix


def write_mix(path: Path, file_type: int, tensors: list[tuple[str, str, tuple[int, int]]]) -> Path:
    """A GGUF (gguf-py) whose tensors are stored in the given types; data are zero bytes."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    for name, kind, (rows, row_length) in tensors:
        qtype = gguf.GGMLQuantizationType[kind]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        data = np.zeros((rows, row_length // block * size), dtype=np.uint8)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.add_tensor("output_norm.weight", np.ones(576, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


Q4_K_M = 15  # llama_ftype numbers
Q4_0 = 2


def test_a_k_quant_of_576_wide_rows_says_it_fell_back(tmp_path: Path) -> None:
    model = write_mix(
        tmp_path / "m-Q4_K_M.gguf",
        Q4_K_M,
        [
            ("blk.0.attn_q.weight", "Q5_0", (576, 576)),  # for Q4_K
            ("blk.0.attn_k.weight", "Q5_0", (192, 576)),
            ("blk.0.ffn_down.weight", "Q8_0", (576, 1536)),  # for Q6_K: 1536 = 6 x 256 fits ...
            ("blk.0.attn_v.weight", "Q8_0", (192, 576)),  # ... 576 does not
            ("blk.0.ffn_up.weight", "Q4_K", (1536, 512)),  # rows of 512 fit: no fallback
        ],
    )
    mix = read_tensor_mix(model)
    assert mix.file_type == "Q4_K_M"
    assert dict(mix.counts) == {"Q5_0": 2, "Q8_0": 2, "Q4_K": 1, "F32": 1}
    assert mix.counts_text() == "Q5_0 ×2, Q8_0 ×2, F32 ×1, Q4_K ×1"
    assert dict(mix.fallback) == {"Q5_0": 2, "Q8_0": 1}
    assert mix.rows == (576,)
    assert mix.note() == (
        "Q4_K_M: 3 of 6 tensors fell back (2 to Q5_0 and 1 to Q8_0): "
        "rows of 576 are not a multiple of 256"
    )
    data = mix.to_json()
    assert data["tensor_types"] == {"Q5_0": 2, "Q8_0": 2, "F32": 1, "Q4_K": 1}
    assert data["fallback"]["count"] == 3  # type: ignore[index]


def test_a_legacy_mix_of_its_own_type_did_not_fall_back(tmp_path: Path) -> None:
    model = write_mix(
        tmp_path / "m-Q4_0.gguf",
        Q4_0,
        [("blk.0.attn_q.weight", "Q4_0", (576, 576)), ("output.weight", "Q6_K", (100, 512))],
    )
    mix = read_tensor_mix(model)
    assert mix.fallback == () and mix.note() is None
    assert mix.to_json()["fallback"] is None
    # Q4_0's output.weight is Q6_K in llama.cpp's mix; rows of 576 make it Q8_0: a fallback.
    model = write_mix(
        tmp_path / "n-Q4_0.gguf",
        Q4_0,
        [("blk.0.attn_q.weight", "Q4_0", (576, 576)), ("output.weight", "Q8_0", (100, 576))],
    )
    assert read_tensor_mix(model).note() == (
        "Q4_0: 1 of 3 tensors fell back to Q8_0: rows of 576 are not a multiple of 256"
    )


def test_the_eval_table_names_the_real_types(tmp_path: Path) -> None:
    model = write_mix(
        tmp_path / "m-Q4_K_M.gguf", Q4_K_M, [("blk.0.attn_q.weight", "Q5_0", (576, 576))]
    )
    report = EvalReport("c.txt", "0" * 64, 5000, 256, 16, None, "abc")
    report.models.append(ModelResult("Q4_K_M", str(model), "Q4_K_M", "m", 1000, 10, 5.5))
    report.models.append(ModelResult("gone", str(tmp_path / "gone.gguf"), "Q8_0", "m", 1, 1, 8.5))
    text = eval_table(report)
    assert "Q4_K_M tensors: F32 ×1, Q5_0 ×1 (Q4_K_M: 1 of 2 tensors fell back to Q5_0" in text
    assert "gone tensors" not in text  # a file that is no longer there is left out


def test_the_model_card_names_the_real_types(tmp_path: Path) -> None:
    from ggufkit.workspace.card import Artefact, measured_table

    model = write_mix(
        tmp_path / "m-Q4_K_M.gguf", Q4_K_M, [("blk.0.attn_q.weight", "Q5_0", (576, 576))]
    )
    text = measured_table([Artefact(model, "Q4_K_M", {"step": "quantize", "size": 1000})])
    row = next(line for line in text.splitlines() if line.startswith("| `m-Q4_K_M.gguf`"))
    assert row.endswith("| F32 ×1, Q5_0 ×1 |")
    assert (
        "`m-Q4_K_M.gguf`: Q4_K_M: 1 of 2 tensors fell back to Q5_0: rows of 576 are not a "
        "multiple of 256 (llama.cpp's fallback)." in text
    )


_LLAMA_FALLBACKS = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


@pytest.mark.needs_llamacpp
@pytest.mark.needs_torch
def test_quantize_reports_the_real_types(tiny_llama_f16_gguf: Path, tmp_path: Path) -> None:
    """The tiny LLaMA's rows (128) fit no k-quant: Q4_K_M falls back, and ggufkit says so with
    the counts gguf-py reads from the file and the number llama-quantize prints."""
    import gguf

    runner = CliRunner()
    args = [str(tiny_llama_f16_gguf), "q4_k_m", "q8_0", "--outdir", str(tmp_path)]
    result = runner.invoke(cli, ["quantize", *args, "--json"])
    assert result.exit_code == 0, result.output
    k_quant, q8 = json.loads(result.stdout)
    for row in (q8, k_quant):
        reader = gguf.GGUFReader(row["output"])
        assert row["tensor_types"] == dict(Counter(t.tensor_type.name for t in reader.tensors))
    log_text = Path(k_quant["log"]).read_text(encoding="utf-8", errors="replace")
    said = _LLAMA_FALLBACKS.search(log_text)
    assert said is not None, log_text[-2000:]
    fallback = k_quant["fallback"]
    # llama.cpp counts the tensors its fallback step demoted; output.weight it stores in Q8_0
    # straight away when its rows do not fit 256 (llama_tensor_get_type), uncounted.
    output_rows = reader.tensors[[t.name for t in reader.tensors].index("output.weight")]
    assert output_rows.tensor_type.name == "Q8_0"
    assert fallback["count"] == int(said.group(1)) + 1 > 1
    assert fallback["row_lengths"] == [128] and "Q5_0" in fallback["types"]
    assert fallback["note"].startswith(f"Q4_K_M: {fallback['count']} of {said.group(2)} tensors")
    assert q8["fallback"] is None
    assert not _LLAMA_FALLBACKS.search(Path(q8["log"]).read_text(encoding="utf-8"))

    human = runner.invoke(cli, ["quantize", *args[:2], "-o", str(tmp_path / "h.gguf")])
    assert human.exit_code == 0, human.output
    counts = ", ".join(f"{k} ×{v}" for k, v in k_quant["tensor_types"].items())
    assert f"tensors: {counts}" in human.stdout
    assert fallback["note"] in human.stderr
