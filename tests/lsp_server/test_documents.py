"""The document mirror: LSP positions (UTF-16 by default, any line ending) to offsets, and edits."""

from __future__ import annotations

import pytest

from lsp_server.documents import UTF8, UTF32, Document, Edit


def test_utf16_positions_count_surrogate_pairs_and_accents_once_or_twice() -> None:
    # "é" is one UTF-16 unit, "😀" two: LSP column 4 is right after the emoji.
    doc = Document("é😀x = 1\n")
    assert doc.offset_at(0, 1) == 1
    assert doc.offset_at(0, 3) == 2
    assert doc.text[doc.offset_at(0, 3) :].startswith("x")
    # Column 2 falls inside the emoji's surrogate pair: stays before it.
    assert doc.offset_at(0, 2) == 1


@pytest.mark.parametrize(("encoding", "column"), [(UTF8, 6), (UTF32, 2)])
def test_other_negotiated_encodings(encoding: str, column: int) -> None:
    doc = Document("é😀x", encoding=encoding)
    assert doc.text[doc.offset_at(0, column) :] == "x"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_lsp_line_ending_starts_a_line(newline: str) -> None:
    doc = Document(f"ab{newline}cd{newline}ef")
    assert doc.text[doc.offset_at(1, 0) :].startswith("cd")
    assert doc.text[doc.offset_at(2, 1) :] == "f"
    # The end of a line is before its terminator, both characters of \r\n included.
    assert doc.offset_at(0, 2) == 2


def test_strict_lookups_refuse_positions_outside_the_text() -> None:
    doc = Document("ab\ncd")
    assert doc.offset_at(5, 0, strict=True) is None
    assert doc.offset_at(0, 3, strict=True) is None
    assert doc.offset_at(-1, 0, strict=True) is None
    # Lenient lookups clamp, as the protocol asks for edits.
    assert doc.offset_at(0, 3) == 2
    assert doc.offset_at(5, 0) == len(doc.text)


def test_incremental_changes_apply_in_order_and_report_offsets() -> None:
    doc = Document("line one\r\nlíne 😀 two\r\n")
    edit = doc.apply((1, 8, 1, 8), "big ")  # after "líne 😀 " (the emoji is two units)
    assert edit == Edit(8 + 2 + 7, 8 + 2 + 7, "big ")
    assert doc.text == "line one\r\nlíne 😀 big two\r\n"
    edit = doc.apply((0, 0, 1, 0), "")
    assert edit == Edit(0, 10, "")
    assert doc.text == "líne 😀 big two\r\n"
    assert doc.revision == 2


def test_a_carriage_return_joined_by_a_later_newline_is_one_line_break() -> None:
    doc = Document("a\rb")
    doc.apply((0, 1, 0, 1), "")  # touch: nothing changes but line starts are recomputed
    doc.apply((1, 0, 1, 0), "\n")  # "a\r\nb": still two lines
    assert doc.text == "a\r\nb"
    assert doc.offset_at(1, 0) == 3


def test_full_text_change_becomes_the_smallest_edit() -> None:
    doc = Document("def f():\n    return 1\n")
    edit = doc.apply(None, "def f():\n    return 42\n")
    assert edit == Edit(20, 21, "42")
    assert doc.apply(None, doc.text) == Edit(len(doc.text), len(doc.text), "")
