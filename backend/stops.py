"""Where an inline completion ends.

A request in the middle of a line wants the rest of that line; a request at the start of a line
(only indentation before the cursor) wants a block: lines until a blank line, a dedent below the
first line's indentation, or a line cap.
"""

from __future__ import annotations

MAX_BLOCK_LINES = 8


def is_mid_line(prefix: str) -> bool:
    current_line = prefix.rsplit("\n", 1)[-1]
    return bool(current_line.strip())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def stop_index(text: str, mid_line: bool, line_prefix: str = "") -> int | None:
    """Length of `text` to keep once the completion is complete, or None if it may go on.

    `line_prefix` is the current line's text before the cursor, so that a block's first line is
    measured at its real indentation.
    """
    if mid_line:
        newline = text.find("\n")
        return newline if newline >= 0 else None
    lines = text.split("\n")
    # The last piece may still be growing; only complete lines decide.
    complete = lines[:-1]
    if not complete:
        return None
    first_indent = _indent(line_prefix + complete[0])
    kept = 0
    for number, line in enumerate(complete):
        if number > 0 and (not line.strip() or _indent(line) < first_indent):
            return kept - 1  # drop the newline before the line that ends the block
        kept += len(line) + 1
        if number + 1 >= MAX_BLOCK_LINES:
            return kept - 1
    return None


def finish(text: str, mid_line: bool, line_prefix: str = "") -> str:
    """The text to show: cut at the stop point (or the token cap) and trimmed at the end."""
    end = stop_index(text, mid_line, line_prefix)
    shown = text if end is None else text[:end]
    shown = shown.rstrip()
    return shown if shown.strip() else ""
