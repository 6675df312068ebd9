"""Where a completion ends: end of line mid-line, end of block at a line start."""

import pytest

from backend import stops


@pytest.mark.parametrize(
    ("prefix", "mid_line"),
    [("x = 1\nprint(", True), ("def f():\n    ", False), ("", False), ("a\n", False), ("    y", True)],
)
def test_mid_line_is_text_before_the_cursor_on_its_line(prefix: str, mid_line: bool) -> None:
    assert stops.is_mid_line(prefix) is mid_line


@pytest.mark.parametrize(
    ("text", "mid_line", "line_prefix", "shown"),
    [
        # mid-line: the rest of the line only
        ("x, y)\nprint(z)\n", True, "f(", "x, y)"),
        ("value  ", True, "a = ", "value"),
        # block: stops at a blank line
        ("return 1\n\nother()\n", False, "    ", "return 1"),
        # block: stops at a dedent below the first line's indentation
        ("if x:\n        y()\n    z()\nw()\n", False, "    ", "if x:\n        y()\n    z()"),
        # whitespace only is an abstention
        ("   \n\n", False, "", ""),
        ("", True, "x", ""),
    ],
)
def test_finish_cuts_at_the_boundary(text: str, mid_line: bool, line_prefix: str, shown: str) -> None:
    assert stops.finish(text, mid_line, line_prefix) == shown


def test_incomplete_text_may_go_on() -> None:
    assert stops.stop_index("foo(bar", mid_line=True) is None
    assert stops.stop_index("for x in y:\n        pri", mid_line=False, line_prefix="    ") is None


def test_block_is_capped_in_lines() -> None:
    text = "".join(f"a{i} = {i}\n" for i in range(stops.MAX_BLOCK_LINES + 3))
    shown = stops.finish(text, mid_line=False)
    assert shown.count("\n") == stops.MAX_BLOCK_LINES - 1
