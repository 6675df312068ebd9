"""How a tracked range moves through one edit, and how much of a suggestion a text retains.

Two rules, both on code-point offsets of the text before the edit:
- `follow`: an accepted suggestion's range. Edits before it shift it, edits inside resize it,
  edits across a boundary clip it, an edit over all of it wipes it.
- `grow`: the spot of a rejected or ignored suggestion, collecting what the user writes there
  instead. Every edit touching or inside the region becomes part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsp_server.documents import Edit


@dataclass(slots=True)
class Followed:
    """An accepted range [start, end) and the state `follow` keeps between edits."""

    start: int
    end: int
    # The whole range was replaced or deleted by one edit: nothing of the suggestion stands.
    wiped: bool = False
    # Where typing extends the range; None when it does not.
    retype_at: int | None = None


def follow(r: Followed, edit: Edit) -> None:
    """Typing right after the range is not part of it, except while the user retypes its tail
    (deleted up to its end, now typing there): that text is what became of the suggestion."""
    if r.wiped:
        return
    start, end, d = r.start, r.end, edit.delta
    retyping, r.retype_at = r.retype_at == end, None
    if edit.start == edit.end == end and retyping:
        r.end = r.retype_at = end + d
    elif edit.end <= start:
        r.start, r.end = start + d, end + d
    elif edit.start >= end:
        pass
    elif start <= edit.start and edit.end <= end:
        r.end = end + d
        if edit.end == end:
            r.retype_at = r.end
    elif edit.start < start and edit.end <= end:
        r.start, r.end = edit.start + len(edit.text), end + d
    elif edit.start < end < edit.end and edit.start >= start:
        r.end = edit.start
    else:
        r.wiped = True
        r.start = r.end = edit.start + len(edit.text)


def grow(start: int, end: int, edit: Edit) -> tuple[int, int]:
    """The region [start, end) after the edit: shifted by edits wholly before it, untouched by
    edits wholly after it, otherwise the union of the region and the edit's new text."""
    if edit.end < start or (edit.end == start and edit.start < start and not edit.text):
        return start + edit.delta, end + edit.delta
    if edit.start > end:
        return start, end
    return min(start, edit.start), max(end, edit.end) + edit.delta


def similarity(suggestion: str, current: str) -> float:
    """Normalized Levenshtein similarity in [0, 1]; 0 when nothing is left."""
    if not current:
        return 0.0
    from rapidfuzz.distance import Levenshtein  # imported on first use: keeps startup light

    return round(min(max(Levenshtein.normalized_similarity(suggestion, current), 0.0), 1.0), 4)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def code_points_for_units(text: str, units: int) -> int:
    """How many leading characters of `text` the first `units` UTF-16 code units cover (a unit
    count that splits a surrogate pair stops before that character)."""
    if text.isascii():
        return min(units, len(text))
    count = used = 0
    for char in text:
        step = 2 if ord(char) > 0xFFFF else 1
        if used + step > units:
            break
        used += step
        count += 1
    return count


def common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
