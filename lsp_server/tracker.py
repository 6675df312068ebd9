"""Follows each served suggestion through the document and reports what became of it.

A suggestion starts at an offset and is first *typed along*: the region from that offset holds
the part of the suggestion the user has produced so far (typing, pasting, or the editor inserting
it). Producing all of it, or the accept command, makes it accepted; after that its inserted range
is followed through every edit and measured at the survival delays. Diverging typing, an edit
elsewhere, a newer request elsewhere or closing the document end an unaccepted suggestion.

Plain object: offsets are code points (see documents.py), times come from injected clocks, events
leave as dicts shaped like `backend.wire.Event` through the `emit` callback.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lsp_server.documents import Edit

logger = logging.getLogger(__name__)

# wire.Event caps `text` at this many characters.
MAX_EVENT_TEXT = 20_000

TYPED_OVER = "typed_over"
MOVED_AWAY = "moved_away"
SUPERSEDED = "superseded"
CLOSED = "closed"


@dataclass
class Suggestion:
    completion_id: str
    uri: str
    text: str
    served_at: float
    # The tracked range [start, end). While typing along, end - start characters of the suggestion
    # have been produced; once inserted it is the range being followed.
    start: int
    end: int
    shown_at: float | None = None
    accepted_at: float | None = None
    inserted: bool = False
    # The whole range was replaced or deleted by one edit: nothing of the suggestion stands.
    wiped: bool = False
    # Where typing extends the range (see _follow); None when it does not.
    retype_at: int | None = None
    checks_done: int = 0
    delays: tuple[float, ...] = field(default_factory=tuple)

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None

    @property
    def spot(self) -> int:
        """Where the next character typed along with the suggestion would go."""
        return self.end


class Tracker:
    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        text_of: Callable[[str], str | None],
        survival_delays_s: Sequence[float] = (30.0, 120.0, 600.0),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self._text_of = text_of
        self._clock = clock
        self._wall_clock = wall_clock
        self.survival_delays_s = survival_delays_s
        self._suggestions: dict[str, Suggestion] = {}

    @property
    def survival_delays_s(self) -> tuple[float, ...]:
        return self._delays

    @survival_delays_s.setter
    def survival_delays_s(self, delays: Sequence[float]) -> None:
        # Applies to suggestions accepted from now on.
        self._delays = tuple(sorted(float(d) for d in delays if d >= 0))

    # -- what the server tells us -------------------------------------------------------------

    def request(self, uri: str, offset: int) -> None:
        """A new completion request: suggestions still waiting elsewhere are no longer on screen."""
        for s in self._waiting():
            if s.uri != uri or s.spot != offset:
                self._finish_unaccepted(s, SUPERSEDED)

    def served(self, completion_id: str, uri: str, offset: int, text: str) -> None:
        if not text or completion_id in self._suggestions:
            return
        now = self._clock()
        self._suggestions[completion_id] = Suggestion(completion_id, uri, text, now, offset, offset)

    def shown(self, completion_id: str) -> None:
        """The suggestion became visible. For now the server calls this when it returns the item;
        editor clients that can tell will notify it explicitly (the seam for that is here)."""
        s = self._suggestions.get(completion_id)
        if s is None or s.shown_at is not None:
            return
        s.shown_at = self._clock()
        self._send(s, "shown")

    def accept(self, completion_id: str) -> bool:
        """The accept command. False when the suggestion is unknown or already over."""
        s = self._suggestions.get(completion_id)
        if s is None:
            return False
        if not s.accepted:
            self._mark_accepted(s, inferred=False)
        return True

    def edit(self, uri: str, edit: Edit) -> None:
        for s in [s for s in self._suggestions.values() if s.uri == uri]:
            if s.inserted:
                _follow(s, edit)
            else:
                self._type_along(s, edit)

    def closed(self, uri: str) -> None:
        for s in [s for s in self._suggestions.values() if s.uri == uri]:
            self._finish(s, CLOSED)

    def close_all(self) -> None:
        """The editor is going away: everything ends as if its document closed."""
        for s in list(self._suggestions.values()):
            self._finish(s, CLOSED)

    def poll(self) -> float | None:
        """Run the survival checks that are due; returns when the next one is (clock time)."""
        now = self._clock()
        next_due: float | None = None
        for s in [s for s in self._suggestions.values() if s.accepted]:
            assert s.accepted_at is not None
            while s.checks_done < len(s.delays) and s.accepted_at + s.delays[s.checks_done] <= now:
                delay = s.delays[s.checks_done]
                s.checks_done += 1
                last = s.checks_done == len(s.delays)
                self._survival(s, delay, final=last)
                if last:
                    del self._suggestions[s.completion_id]
            if s.checks_done < len(s.delays):
                due = s.accepted_at + s.delays[s.checks_done]
                next_due = due if next_due is None else min(next_due, due)
        return next_due

    # -- introspection ------------------------------------------------------------------------

    def get(self, completion_id: str) -> Suggestion | None:
        return self._suggestions.get(completion_id)

    @property
    def waiting_count(self) -> int:
        return sum(1 for _ in self._waiting())

    @property
    def accepted_count(self) -> int:
        return sum(1 for s in self._suggestions.values() if s.accepted)

    # -- inference ----------------------------------------------------------------------------

    def _waiting(self) -> Iterable[Suggestion]:
        return [s for s in self._suggestions.values() if not s.accepted]

    def _type_along(self, s: Suggestion, edit: Edit) -> None:
        produced = s.text[: s.end - s.start]
        if s.start <= edit.start and edit.end <= s.end:
            # The edit lies within what was typed along so far (insertions at the spot included).
            now = produced[: edit.start - s.start] + edit.text + produced[edit.end - s.start :]
            if s.text.startswith(now) or now.startswith(s.text):
                # Typed or pasted along; text beyond the suggestion (an auto-closed bracket)
                # stays outside the tracked range.
                s.end = s.start + min(len(now), len(s.text))
                if s.end - s.start == len(s.text):
                    s.inserted = True
                    if not s.accepted:
                        self._mark_accepted(s, inferred=True)
                return
        if s.accepted:
            # Accepted by command but the editor inserted something else: follow what is there.
            s.inserted = True
            _follow(s, edit)
            return
        touches = edit.start <= s.end and edit.end >= s.start
        self._finish_unaccepted(s, TYPED_OVER if touches else MOVED_AWAY)

    def _mark_accepted(self, s: Suggestion, *, inferred: bool) -> None:
        s.accepted_at = self._clock()
        s.delays = self._delays
        extra = {"reason": "inferred"} if inferred else {}
        self._send(s, "accepted", visible_ms=self._visible_ms(s), **extra)

    def _finish(self, s: Suggestion, reason: str) -> None:
        if s.accepted:
            assert s.accepted_at is not None
            self._survival(s, self._clock() - s.accepted_at, final=True)
            del self._suggestions[s.completion_id]
        else:
            self._finish_unaccepted(s, reason)

    def _finish_unaccepted(self, s: Suggestion, reason: str) -> None:
        self._send(s, "ignored", visible_ms=self._visible_ms(s), reason=reason, final=True)
        del self._suggestions[s.completion_id]

    def _survival(self, s: Suggestion, delay_s: float, *, final: bool) -> None:
        document = self._text_of(s.uri)
        current = "" if s.wiped or document is None else document[s.start : s.end]
        score = similarity(s.text, current)
        self._send(
            s,
            "survival",
            delay_s=round(max(delay_s, 0.0), 3),
            text=current[:MAX_EVENT_TEXT],
            similarity=score,
            retained_chars=round(score * len(s.text), 3),
            final=final,
        )

    def _visible_ms(self, s: Suggestion) -> float | None:
        if s.shown_at is None:
            return None
        return round(max(self._clock() - s.shown_at, 0.0) * 1000.0, 1)

    def _send(self, s: Suggestion, kind: str, **fields: Any) -> None:
        event: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "completion_id": s.completion_id,
            "kind": kind,
            "client_ts": self._wall_clock(),
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._emit(event)
        except Exception:
            # Losing one observation must not break the editor session.
            logger.exception("could not record %s event for %s", kind, s.completion_id)


def _follow(s: Suggestion, edit: Edit) -> None:
    """Move the accepted range [start, end) through one edit: edits before it shift it, edits
    inside it resize it, edits across a boundary clip it, an edit over all of it wipes it.

    Typing right after the range is not part of it, except while the user retypes its tail
    (deleted up to its end, now typing there): that text is what became of the suggestion.
    """
    if s.wiped:
        return
    start, end, d = s.start, s.end, edit.delta
    retyping, s.retype_at = s.retype_at == end, None
    if edit.start == edit.end == end and retyping:
        s.end = s.retype_at = end + d
    elif edit.end <= start:
        s.start, s.end = start + d, end + d
    elif edit.start >= end:
        pass
    elif start <= edit.start and edit.end <= end:
        s.end = end + d
        if edit.end == end:
            s.retype_at = s.end
    elif edit.start < start and edit.end <= end:
        s.start, s.end = edit.start + len(edit.text), end + d
    elif edit.start < end < edit.end and edit.start >= start:
        s.end = edit.start
    else:
        s.wiped = True
        s.start = s.end = edit.start + len(edit.text)


def similarity(suggestion: str, current: str) -> float:
    """Normalized Levenshtein similarity in [0, 1]; 0 when nothing is left."""
    if not current:
        return 0.0
    from rapidfuzz.distance import Levenshtein  # imported on first use: keeps startup light

    return round(min(max(Levenshtein.normalized_similarity(suggestion, current), 0.0), 1.0), 4)
