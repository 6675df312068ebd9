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
        self._lines = LineStarts(text)

    def line_start(self, line: int) -> int:
        return self._lines.get(line)

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def offset_at(self, line: int, character: int, *, strict: bool = False) -> int | None:
        """The offset of an LSP position.

        Lenient (for edits, as the spec asks): a line past the end means the end of the text and a
        column past the line's end means the line's end. Strict (for requests): None instead.
        """
        starts = self._lines
        if line < 0 or character < 0:
            return None if strict else 0
        if line >= len(starts):
            return None if strict else len(self.text)
        start = starts.get(line)
        if line + 1 < len(starts):
            next_start = starts.get(line + 1)
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
        first_line = last_line = None
        if change_range is None:
            edit = _minimal_edit(self.text, new_text)
        else:
            start_line, start_char, end_line, end_char = change_range
            start = self.offset_at(start_line, start_char)
            end = self.offset_at(end_line, end_char)
            assert start is not None and end is not None  # lenient lookups always answer
            if end < start:
                start, end = end, start
                start_line, end_line = end_line, start_line
            edit = Edit(start, end, new_text)
            first_line, last_line = start_line, end_line
        self.text = self.text[: edit.start] + edit.text + self.text[edit.end :]
        self.revision += 1
        if first_line is None or last_line is None:
            self._lines = LineStarts(self.text)
        else:
            self._lines.update(self.text, first_line, last_line, edit.delta)
        return edit


class LineStarts:
    """Where each line starts, kept up to date edit by edit in time that grows with the lines an
    edit touches, not with the document: one long file gets thousands of edits.

    The starts after the last edit are shifted lazily: entries from index `_from` on still lack
    `_shift`, which is settled only over the span between that index and the next edit's.
    """

    def __init__(self, text: str) -> None:
        self._raw = [0, *(m.end() for m in _LINE_BREAK.finditer(text))]
        self._from = len(self._raw)
        self._shift = 0

    def __len__(self) -> int:
        return len(self._raw)

    def get(self, line: int) -> int:
        return self._raw[line] + (self._shift if line >= self._from else 0)

    def update(self, text: str, first_line: int, last_line: int, delta: int) -> None:
        """`text` after an edit within lines first_line..last_line that changed its length by
        delta. A line on either side is rescanned too: an edit can join or split a \\r\\n there."""
        raw = self._raw
        low = max(min(first_line, len(raw) - 1) - 1, 0)
        high = min(last_line + 2, len(raw))  # the first line start past the edit left as it was
        self._settle(high)
        region_start = raw[low]
        if high < len(raw):
            region_end = raw[high] + self._shift + delta
            inner = [m.end() for m in _LINE_BREAK.finditer(text, region_start, region_end)]
            if inner and inner[-1] == region_end:
                inner.pop()  # that break starts line `high`, kept below
        else:
            # To the end: a break there starts an empty last line.
            inner = [m.end() for m in _LINE_BREAK.finditer(text, region_start)]
        raw[low + 1 : high] = inner
        self._from = low + 1 + len(inner)
        self._shift += delta

    def _settle(self, index: int) -> None:
        """Apply the pending shift to the entries between `_from` and index, either way."""
        raw, shift = self._raw, self._shift
        if not shift:
            self._from = index
            return
        if index > self._from:
            for i in range(self._from, index):
                raw[i] += shift
            self._from = index
        elif index < self._from:
            # Entries in [index, _from) are settled; un-settle them so the shift covers index on.
            for i in range(index, self._from):
                raw[i] -= shift
            self._from = index


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
