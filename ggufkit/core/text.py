"""Text from files on its way to a terminal: control characters shown, never obeyed.

A GGUF's keys, tensor names, ``general.name`` or a checkpoint's file names are whatever their
author wrote: an ESC sequence there would clear the screen, plant a hyperlink (OSC 8), set the
window title, and ``\\r`` would overwrite what was printed before it. Every human output that
shows such text passes it through :func:`printable` (the error printer, ``inspect``, tables);
:func:`markdown_table` does so for every cell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that reorder what is
# shown (U+202A..U+202E, U+2066..U+2069), plus the line and paragraph separators.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object, *, keep_lines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\e``, ``\\r``, ``\\x07``,
    ``\\u202e``); with ``keep_lines`` newlines and tabs stay (a multi-line message)."""
    text = str(text)
    pattern = _UNSAFE_KEEP_LINES if keep_lines else _UNSAFE
    return pattern.sub(_escape, text) if pattern.search(text) else text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` has one of ``l``/``r`` per column; control characters in a
    cell (a model's name from its file) are shown escaped."""
    header = [printable(c) for c in header]
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
            for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
