"""Our own copy of each open document, turning LSP content changes into offset edits.

pygls applies every change of a `didChange` to its workspace before our handler runs, but each
change's range refers to the text left by the change before it, so the edits the tracker needs
can only be computed by replaying the changes one by one here.

Offsets are Python string indices (code points). LSP positions count code units of the
negotiated encoding (UTF-16 unless the client asked otherwise) and lines end at \\n, \\r\\n or \\r.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

UTF8 = "utf-8"
UTF16 = "utf-16"
UTF32 = "utf-32"


@dataclass(frozen=True, slots=True)
class Edit:
    """`text[start:end]` (offsets in the text before the edit) replaced by `text`."""

    start: int
    end: int
    text: str

    @property
    def delta(self) -> int:
        return len(self.text) - (self.end - self.start)


def _char_units(char: str, encoding: str) -> int:
    point = ord(char)
    if encoding == UTF16:
        return 2 if point > 0xFFFF else 1
    if encoding == UTF8:
        return 1 if point < 0x80 else 2 if point < 0x800 else 3 if point < 0x10000 else 4
    return 1


def code_units(text: str, encoding: str = UTF16) -> int:
    if encoding == UTF32 or text.isascii():
        return len(text)
    return sum(_char_units(c, encoding) for c in text)


class Document:
    def __init__(self, text: str, language_id: str = "", encoding: str = UTF16) -> None:
        self.text = text
        self.language_id = language_id
        self.encoding = encoding
        # Bumped on every edit: a completion answer computed for an older revision is stale.
        self.revision = 0
        # The client's version number, when it sends one: older changes are stale.
        self.version: int | None = None
        self._line_starts: list[int] | None = None

    def line_starts(self) -> list[int]:
        if self._line_starts is None:
            self._line_starts = [0, *(m.end() for m in _LINE_BREAK.finditer(self.text))]
        return self._line_starts

    def offset_at(self, line: int, character: int, *, strict: bool = False) -> int | None:
        """The offset of an LSP position.

        Lenient (for edits, as the spec asks): a line past the end means the end of the text and a
        column past the line's end means the line's end. Strict (for requests): None instead.
        """
        starts = self.line_starts()
        if line < 0 or character < 0:
            return None if strict else 0
        if line >= len(starts):
            return None if strict else len(self.text)
        start = starts[line]
        if line + 1 < len(starts):
            next_start = starts[line + 1]
            # The line's content stops before its terminator (one or two characters).
            end = next_start - (2 if self.text.startswith("\r\n", next_start - 2) else 1)
        else:
            end = len(self.text)
        content = self.text[start:end]
        if self.encoding == UTF32 or content.isascii():
            column, past_end = character, character > len(content)
        else:
            column, units = 0, 0
            while column < len(content) and units < character:
                step = _char_units(content[column], self.encoding)
                if units + step > character:
                    break  # the position splits a character: keep it before that character
                units += step
                column += 1
            past_end = column == len(content) and units < character
        if past_end:
            return None if strict else end
        return start + column

    def apply(self, change_range: tuple[int, int, int, int] | None, new_text: str) -> Edit:
        """Apply one content change: (start line, start char, end line, end char), or None for the
        whole text. Returns the edit in offsets of the text before it."""
        if change_range is None:
            edit = _minimal_edit(self.text, new_text)
        else:
            start_line, start_char, end_line, end_char = change_range
            start = self.offset_at(start_line, start_char)
            end = self.offset_at(end_line, end_char)
            assert start is not None and end is not None  # lenient lookups always answer
            if end < start:
                start, end = end, start
            edit = Edit(start, end, new_text)
        self.text = self.text[: edit.start] + edit.text + self.text[edit.end :]
        self.revision += 1
        self._line_starts = None
        return edit


def _minimal_edit(old: str, new: str) -> Edit:
    """A full-text replacement narrowed to the part that changed, so tracked ranges outside it
    survive clients that only send whole documents."""
    limit = min(len(old), len(new))
    prefix = _common_length(lambda n: old[:n] == new[:n], limit)
    rest = limit - prefix
    suffix = _common_length(lambda n: old[len(old) - n :] == new[len(new) - n :], rest)
    return Edit(prefix, len(old) - suffix, new[prefix : len(new) - suffix])


def _common_length(matches: Callable[[int], bool], limit: int) -> int:
    """The largest n <= limit with matches(n), by bisection: slice comparisons run in C."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if matches(middle):
            low = middle
        else:
            high = middle - 1
    return low
