"""Property: after any sequence of edits, the accepted range the tracker follows (through the
document mirror, from LSP UTF-16 positions) holds exactly the text a reference finds.

The reference shares no offset arithmetic with the tracker: it keeps the document as three
strings, before + inside + after, and replays each edit on them, so the range is simply `inside`.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from core.wire import Event
from lsp_server.documents import Document
from lsp_server.tracker import Tracker

URI = "file:///w/a.py"
_BREAK = re.compile(r"\r\n|\r|\n")


class Reference:
    def __init__(self, before: str, inside: str, after: str) -> None:
        self.before, self.inside, self.after = before, inside, after
        self.wiped = False
        self.retype_at: int | None = None

    @property
    def text(self) -> str:
        return self.before + self.inside + self.after

    def apply(self, s: int, e: int, t: str) -> None:
        if self.wiped:
            text = self.text
            self.before, self.inside, self.after = text[:s] + t + text[e:], "", ""
            return
        a, b = len(self.before), len(self.before) + len(self.inside)
        retyping, self.retype_at = self.retype_at == b, None
        if s == e == b and retyping:  # retyping the tail it just replaced
            self.inside += t
            self.retype_at = b + len(t)
        elif e <= a:
            self.before = self.before[:s] + t + self.before[e:]
        elif s >= b:
            self.after = self.after[: s - b] + t + self.after[e - b :]
        elif a <= s and e <= b:
            self.inside = self.inside[: s - a] + t + self.inside[e - a :]
            if e == b:
                self.retype_at = a + len(self.inside)
        elif s < a and e <= b:
            self.before, self.inside = self.before[:s] + t, self.inside[e - a :]
        elif a <= s < b < e:
            self.inside, self.after = self.inside[: s - a], t + self.after[e - b :]
        else:
            text = self.text
            self.before, self.inside, self.after = text[:s] + t + text[e:], "", ""
            self.wiped = True


def position(text: str, offset: int) -> tuple[int, int]:
    """LSP position (UTF-16 columns) of an offset, computed from scratch."""
    line, start = 0, 0
    for m in _BREAK.finditer(text, 0, offset):
        if m.end() <= offset:
            line, start = line + 1, m.end()
    return line, len(text[start:offset].encode("utf-16-le")) // 2


def splits_crlf(text: str, offset: int) -> bool:
    return 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n"


# No lone "\r": with boundaries never between "\r" and "\n", no edit can join two line breaks.
pieces = st.sampled_from(["a", "b", "é", "😀", " ", "\n", "\r\n", "(", "xy"])
inserts = st.lists(pieces, max_size=4).map("".join)
edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6), inserts), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(pieces, max_size=8).map("".join),
    suggestion=st.lists(pieces, min_size=1, max_size=6).map("".join),
    after=st.lists(pieces, max_size=8).map("".join),
    script=edits,
)
def test_the_followed_range_matches_a_full_text_replay(
    before: str, suggestion: str, after: str, script: list[tuple[float, int, str]]
) -> None:
    if (before.endswith("\r") and suggestion.startswith("\n")) or (
        suggestion.endswith("\r") and after.startswith("\n")
    ):
        return
    events: list[Event] = []
    doc = Document(before + after)
    tracker = Tracker(
        events.append, lambda uri: doc.text, (1.0,), rewrite_window_s=0.0, infer_shown=True, clock=lambda: 0.0
    )
    line, char = position(doc.text, len(before))
    tracker.served("c1", URI, len(before), suggestion)
    tracker.accept("c1")
    tracker.edit(URI, doc.apply((line, char, line, char), suggestion))
    ref = Reference(before, suggestion, after)
    assert doc.text == ref.text

    for fraction, length, text in script:
        s = round(fraction * len(ref.text))
        e = min(s + length, len(ref.text))
        if splits_crlf(ref.text, s) or splits_crlf(ref.text, e):
            continue  # LSP positions cannot point between \r and \n
        (l1, c1), (l2, c2) = position(ref.text, s), position(ref.text, e)
        tracker.edit(URI, doc.apply((l1, c1, l2, c2), text))
        ref.apply(s, e, text)
        assert doc.text == ref.text
        followed = tracker.get("c1")
        assert followed is not None and followed.range.wiped == ref.wiped
        assert ("" if ref.wiped else doc.text[followed.start : followed.end]) == ref.inside
