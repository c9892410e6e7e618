"""The row-block pipeline the GGUF and safetensors writers share."""

from __future__ import annotations

import pytest

from ggufkit.formats.blocks import BlockPipeline, row_blocks


def test_row_blocks_cover_every_row_once() -> None:
    assert list(row_blocks(10, 3, 7)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert list(row_blocks(3, 100, 10)) == [(0, 1), (1, 2), (2, 3)]  # a row beyond the size
    assert list(row_blocks(0, 4, 16)) == []


@pytest.mark.parametrize("window", [1, 2, 3])
def test_items_are_done_in_order_with_their_results(window: int) -> None:
    finished: list[tuple[str, list[int]]] = []

    def task(value: int) -> int:
        return value

    with BlockPipeline[str, int](2, window, lambda i, r: finished.append((i, r)), "t") as pipe:
        for n, name in enumerate("abcde"):
            pipe.add(name, [lambda v=v: task(v) for v in range(n + 1)])
            assert len(finished) >= n + 2 - window  # never more than `window` items pending
        pipe.finish()
    assert finished == [(name, list(range(n + 1))) for n, name in enumerate("abcde")]


def test_a_failing_block_reaches_the_caller() -> None:
    done: list[str] = []

    def fail() -> None:
        raise OSError(28, "No space left on device")

    pipe = BlockPipeline[str, None](2, 2, lambda i, r: done.append(i), "t")
    with pytest.raises(OSError, match="No space"), pipe:
        pipe.add("a", [lambda: None])
        pipe.add("b", [fail])
        pipe.add("c", [lambda: None])
    assert done == ["a"]  # b's error stops the run before c is reported done
