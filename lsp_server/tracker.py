"""Follows each served suggestion through the document and reports what became of it.

A suggestion starts at an offset and is first *typed along*: the region from that offset holds
the part of the suggestion produced so far (typing, pasting, or the editor inserting it).
- Producing all of it, or the accept command, accepts it; a client's partial acceptance accepts
  a prefix. The accepted range is then followed through every edit and measured at the survival
  delays (and at close): the text there, its similarity s to the suggestion, retained characters.
- Diverging typing, an edit elsewhere, a newer request or suggestion, closing the document, or the
  client's dismissal end it unaccepted (ignored or rejected). If part of it had arrived in one
  piece (pasted or inserted by the editor), that part counts as a partial acceptance.
- After a rejection or ignore, what the user writes at its spot within the rewrite window is
  sent as the rewrite, with its similarity to the suggestion. That rewrite is the episode's last
  (final) event, so the backend keeps the episode open for it.

Plain object: offsets are code points (see documents.py), times come from injected clocks, events
leave as dicts shaped like `core.wire.Event` through the `emit` callback.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uuid6 import uuid7

from lsp_server.documents import Edit
from lsp_server.ranges import (
    Followed,
    code_points_for_units,
    common_prefix_length,
    follow,
    grow,
    similarity,
    utf16_units,
)

logger = logging.getLogger(__name__)

# wire.Event caps `text` at this many characters.
MAX_EVENT_TEXT = 20_000

TYPED_OVER = "typed_over"
MOVED_AWAY = "moved_away"
SUPERSEDED = "superseded"
CLOSED = "closed"
INFERRED = "inferred"


@dataclass
class Suggestion:
    completion_id: str
    uri: str
    text: str
    served_at: float
    # The tracked range. While typing along, end - start characters of the suggestion have been
    # produced; once inserted it is the range being followed.
    range: Followed
    shown_at: float | None = None
    accepted_at: float | None = None
    # How much of the text was accepted (code points): len(text), or a prefix for a partial one.
    target: int = 0
    # An edit brought two or more of its characters at once: the editor inserted or pasted it.
    inserted_in_one_piece: bool = False
    inserted: bool = False
    # The client dismissed it after accepting part of it: what was accepted is still followed,
    # the rest is never offered again.
    dismissed: bool = False
    checks_done: int = 0
    delays: tuple[float, ...] = field(default_factory=tuple)

    @property
    def start(self) -> int:
        return self.range.start

    @property
    def end(self) -> int:
        return self.range.end

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


@dataclass
class Rewrite:
    """The spot of a rejected or ignored suggestion, collecting what the user writes there."""

    completion_id: str
    uri: str
    suggestion: str
    start: int
    end: int
    due: float


class Tracker:
    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        text_of: Callable[[str], str | None],
        survival_delays_s: Sequence[float] = (30.0, 120.0, 600.0),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rewrite_window_s: float = 30.0,
        infer_shown: bool = True,
    ) -> None:
        self._emit = emit
        self._text_of = text_of
        self._clock = clock
        self._wall_clock = wall_clock
        self.survival_delays_s = survival_delays_s
        self.rewrite_window_s = rewrite_window_s
        # False when the client sends flywheel/didShowCompletion itself.
        self.infer_shown = infer_shown
        self._suggestions: dict[str, Suggestion] = {}
        self._rewrites: dict[str, Rewrite] = {}
        # (when, completion id) of the next survival check or rewrite capture of each; entries
        # for what has ended since are skipped when they come up.
        self._due: list[tuple[float, str]] = []

    @property
    def survival_delays_s(self) -> tuple[float, ...]:
        return self._delays

    @survival_delays_s.setter
    def survival_delays_s(self, delays: Sequence[float]) -> None:
        # Applies to suggestions accepted from now on.
        self._delays = tuple(sorted(float(d) for d in delays if d >= 0))

    # -- what the server and the client tell us ---------------------------------------------

    def request(self, uri: str, offset: int) -> None:
        """A new completion request: suggestions still waiting elsewhere are no longer on screen."""
        for s in self._waiting():
            if s.uri != uri or s.end != offset:
                self._end_unaccepted(s, SUPERSEDED)

    def served(self, completion_id: str, uri: str, offset: int, text: str) -> None:
        if not text or completion_id in self._suggestions:
            return
        # An editor shows one inline suggestion at a time: a new one replaces any still waiting.
        for s in self._waiting():
            self._end_unaccepted(s, SUPERSEDED)
        now = self._clock()
        self._suggestions[completion_id] = Suggestion(
            completion_id, uri, text, now, Followed(offset, offset), target=len(text)
        )
        if self.infer_shown:
            self.shown(completion_id)

    def pending_at(self, uri: str, offset: int) -> Suggestion | None:
        """The suggestion still waiting whose next character goes at this offset, if any, with
        text left to offer: the typed-ahead cache answers from it."""
        for s in self._suggestions.values():
            if s.uri != uri or s.end != offset or s.end - s.start >= len(s.text) or s.range.wiped:
                continue
            if s.dismissed:
                continue
            if not s.inserted or self._untouched(s):
                return s
        return None

    def _untouched(self, s: Suggestion) -> bool:
        document = self._text_of(s.uri) or ""
        return document[s.start : s.end] == s.text[: s.end - s.start]

    def shown(self, completion_id: str) -> None:
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
        if not s.accepted or s.target < len(s.text):
            self._accept_prefix(s, len(s.text))
            self._mark_accepted(s, "accepted")
        return True

    def partially_accept(self, completion_id: str, accepted_units: int) -> bool:
        """The client accepted the first `accepted_units` UTF-16 units of the suggestion."""
        s = self._suggestions.get(completion_id)
        if s is None:
            return False
        count = code_points_for_units(s.text, accepted_units)
        if count >= len(s.text):
            return self.accept(completion_id)
        if count == 0 or count <= (s.target if s.accepted else 0):
            return True  # nothing new accepted
        self._accept_prefix(s, count)
        self._mark_accepted(s, "partially_accepted", accepted_chars=utf16_units(s.text[:count]))
        return True

    def reject(self, completion_id: str) -> bool:
        """The client dismissed the suggestion. Ignored once any of it was accepted."""
        s = self._suggestions.get(completion_id)
        if s is None:
            return False
        s.dismissed = True
        if not s.accepted:
            self._end_unaccepted(s, None)
        return True

    def edit(self, uri: str, edit: Edit) -> None:
        for s in [s for s in self._suggestions.values() if s.uri == uri]:
            if s.inserted:
                follow(s.range, edit)
            else:
                self._type_along(s, edit)
        for w in self._rewrites.values():
            if w.uri == uri:
                w.start, w.end = grow(w.start, w.end, edit)

    def closed(self, uri: str) -> None:
        for s in [s for s in self._suggestions.values() if s.uri == uri]:
            self._finish(s, CLOSED)
        for w in [w for w in self._rewrites.values() if w.uri == uri]:
            self._send_rewrite(w)

    def close_all(self) -> None:
        """The editor is going away: everything ends as if its document closed."""
        for s in list(self._suggestions.values()):
            self._finish(s, CLOSED)
        for w in list(self._rewrites.values()):
            self._send_rewrite(w)

    def poll(self) -> float | None:
        """Run the survival checks and rewrite captures that are due; returns when the next one
        is (clock time). Cheap when nothing is due: it runs after every edit."""
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            _, completion_id = heapq.heappop(self._due)
            s = self._suggestions.get(completion_id)
            if s is not None and s.accepted:
                self._run_checks(s, now)
            w = self._rewrites.get(completion_id)
            if w is not None and w.due <= now:
                self._send_rewrite(w)
        while self._due and not self._scheduled(self._due[0][1]):
            heapq.heappop(self._due)  # ended early (closed, shut down): nothing left to run
        return self._due[0][0] if self._due else None

    def _scheduled(self, completion_id: str) -> bool:
        s = self._suggestions.get(completion_id)
        return completion_id in self._rewrites or (s is not None and s.accepted)

    def _run_checks(self, s: Suggestion, now: float) -> None:
        assert s.accepted_at is not None
        ran = False
        while s.checks_done < len(s.delays) and s.accepted_at + s.delays[s.checks_done] <= now:
            delay = s.delays[s.checks_done]
            s.checks_done += 1
            ran = True
            last = s.checks_done == len(s.delays)
            self._survival(s, delay, final=last)
            if last:
                del self._suggestions[s.completion_id]
        if ran and s.checks_done < len(s.delays):
            heapq.heappush(self._due, (s.accepted_at + s.delays[s.checks_done], s.completion_id))

    # -- introspection ------------------------------------------------------------------------

    def get(self, completion_id: str) -> Suggestion | None:
        return self._suggestions.get(completion_id)

    def rewrite_of(self, completion_id: str) -> Rewrite | None:
        return self._rewrites.get(completion_id)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting())

    @property
    def accepted_count(self) -> int:
        return sum(1 for s in self._suggestions.values() if s.accepted)

    @property
    def rewrite_count(self) -> int:
        return len(self._rewrites)

    # -- inference ----------------------------------------------------------------------------

    def _waiting(self) -> list[Suggestion]:
        return [s for s in self._suggestions.values() if not s.accepted]

    def _type_along(self, s: Suggestion, edit: Edit) -> None:
        r = s.range
        produced = s.text[: r.end - r.start]
        if r.start <= edit.start and edit.end <= r.end:
            # The edit lies within what was typed along so far (insertions at the spot included).
            now = produced[: edit.start - r.start] + edit.text + produced[edit.end - r.start :]
            if s.text.startswith(now) or now.startswith(s.text):
                # Typed or pasted along; text beyond the suggestion (an auto-closed bracket)
                # stays outside the tracked range.
                r.end = r.start + min(len(now), len(s.text))
                if len(edit.text) > 1 and r.end > r.start:
                    s.inserted_in_one_piece = True
                if r.end - r.start >= s.target and (s.accepted or r.end - r.start == len(s.text)):
                    if r.end - r.start > s.target:
                        r.end = r.start + s.target  # a partial acceptance tracks its prefix only
                    s.inserted = True
                    if not s.accepted:
                        self._mark_accepted(s, "accepted", reason=INFERRED)
                return
        if s.accepted:
            # Accepted, but the editor inserted something else: follow what is there.
            s.inserted = True
            follow(r, edit)
            return
        touches = edit.start <= r.end and edit.end >= r.start
        self._end_unaccepted(s, TYPED_OVER if touches else MOVED_AWAY, edit)

    def _accept_prefix(self, s: Suggestion, count: int) -> None:
        """Accept the first `count` characters. A partial acceptance already inserted, and
        untouched since, takes in what of the next ones the editor inserted right after it (a
        client accepting word by word may insert before it notifies) and types along the rest."""
        s.target = count
        if not s.inserted or s.range.wiped or s.end - s.start >= count or not self._untouched(s):
            return
        there = (self._text_of(s.uri) or "")[s.start : s.start + count]
        matched = common_prefix_length(there, s.text[:count])
        s.range.end = s.start + max(matched, s.end - s.start)
        s.inserted = False

    def _mark_accepted(self, s: Suggestion, kind: str, **fields: Any) -> None:
        if s.accepted_at is None:
            s.accepted_at = self._clock()
            s.delays = self._delays
            if s.delays:
                heapq.heappush(self._due, (s.accepted_at + s.delays[0], s.completion_id))
        if s.end - s.start >= s.target and not s.inserted:
            # Already typed along as far as accepted: follow it from here.
            s.range.end = s.start + s.target
            s.inserted = True
        self._send(s, kind, visible_ms=self._visible_ms(s), **fields)

    def _finish(self, s: Suggestion, reason: str) -> None:
        if s.accepted:
            assert s.accepted_at is not None
            self._survival(s, self._clock() - s.accepted_at, final=True)
            del self._suggestions[s.completion_id]
        else:
            self._end_unaccepted(s, reason)

    def _end_unaccepted(self, s: Suggestion, reason: str | None, edit: Edit | None = None) -> None:
        """Rejected (reason None) or ignored. Part of it inserted in one piece is a partial
        acceptance instead; otherwise the rewrite capture starts at its spot."""
        produced = s.end - s.start
        if reason is not None and s.inserted_in_one_piece and 0 < produced < len(s.text):
            s.target = produced
            self._mark_accepted(s, "partially_accepted", accepted_chars=utf16_units(s.text[:produced]))
            if edit is not None:
                follow(s.range, edit)
            if reason == CLOSED:
                self._finish(s, CLOSED)
            return
        del self._suggestions[s.completion_id]
        seen = s.shown_at is not None
        # Unseen, or nowhere left to watch: nothing can follow, so this event is the last.
        watch = seen and reason != CLOSED and self.rewrite_window_s > 0
        fields: dict[str, Any] = {"visible_ms": self._visible_ms(s), "final": not watch}
        if reason is None:
            self._send(s, "rejected", **fields)
        else:
            self._send(s, "ignored", reason=reason, **fields)
        if watch:
            w = Rewrite(s.completion_id, s.uri, s.text, s.start, s.end, self._clock() + self.rewrite_window_s)
            if edit is not None:
                w.start, w.end = grow(w.start, w.end, edit)
            self._rewrites[w.completion_id] = w
            heapq.heappush(self._due, (w.due, w.completion_id))

    def _survival(self, s: Suggestion, delay_s: float, *, final: bool) -> None:
        document = self._text_of(s.uri)
        current = "" if s.range.wiped or document is None else document[s.start : s.end]
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

    def _send_rewrite(self, w: Rewrite) -> None:
        del self._rewrites[w.completion_id]
        document = self._text_of(w.uri) or ""
        written = document[w.start : w.end]
        # What replaces the suggestion spans as many lines as it did; later lines are other work.
        written = "".join(written.splitlines(keepends=True)[: w.suggestion.count("\n") + 1])
        if not w.suggestion.endswith("\n"):
            written = written.rstrip("\r\n")
        fields = {"text": written[:MAX_EVENT_TEXT], "similarity": similarity(w.suggestion, written)}
        self._send_raw(w.completion_id, "rewrite", final=True, **fields)

    def _visible_ms(self, s: Suggestion) -> float:
        # Never shown: visible for no time at all, so the backend does not train on it.
        if s.shown_at is None:
            return 0.0
        return round(max(self._clock() - s.shown_at, 0.0) * 1000.0, 1)

    def _send(self, s: Suggestion, kind: str, **fields: Any) -> None:
        self._send_raw(s.completion_id, kind, **fields)

    def _send_raw(self, completion_id: str, kind: str, **fields: Any) -> None:
        event: dict[str, Any] = {
            "event_id": uuid7().hex,
            "completion_id": completion_id,
            "kind": kind,
            "client_ts": self._wall_clock(),
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._emit(event)
        except Exception:
            # Losing one observation must not break the editor session.
            logger.exception("could not record %s event for %s", kind, completion_id)
