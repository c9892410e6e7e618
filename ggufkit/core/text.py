"""Text from files on its way to a terminal: control characters shown, never obeyed.

A GGUF's keys, tensor names, ``general.name`` or a checkpoint's file names are whatever their
author wrote: an ESC sequence there would clear the screen, plant a hyperlink (OSC 8), set the
window title, and ``\\r`` would overwrite what was printed before it. Every human output that
shows such text passes it through :func:`printable` (the error printer, ``inspect``, tables).
"""

from __future__ import annotations

import re

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
