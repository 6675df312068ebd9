"""Follows each served suggestion through the document and reports what became of it.

A suggestion's life is a small state machine; `Tracker._step` holds every transition.

    TypingAlong ──accepted──► Inserting ──the accepted part is there──► Following
       │ diverging typing, an edit elsewhere,                             │ the last survival
       │ a newer request or suggestion,                                   │ check, closing
       │ the client's dismissal, closing                                  ▼
       └───────────────────────────────────► Collecting ──────────────► Ended
                                                        the window closes,
                                                        closing
    (Produced to the end, or there already when accepted: straight to Following. Unseen, or no
    rewrite window: straight to Ended. The next word accepted: back to Inserting.)

- TypingAlong: shown, not accepted. The region from its offset holds the part of the suggestion
  produced so far (typing, pasting, or the editor inserting it). If part of it arrived in one piece
  (pasted or inserted by the editor) before it ends unaccepted, that part was accepted instead.
- Inserting: accepted (all of it, or a prefix for a partial acceptance) before the accepted part
  is in the document: the accept command ahead of the editor's insertion, a client accepting word
  by word. Typed along until the accepted part is there.
- Following: accepted and there. The range is followed through every edit (ranges.follow) and
  measured at the survival delays, and at close: the text there, its similarity s to the
  suggestion, retained characters.
- Collecting: rejected or ignored. What the user writes at its spot (ranges.grow) within the
  rewrite window is sent as the rewrite, with its similarity to the suggestion. That rewrite is the
  episode's last (final) event, so the backend keeps the episode open for it.

Plain object: offsets are code points (see documents.py), times come from injected clocks, events
leave as `core.wire.Event`s through the `emit` callback.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from uuid6 import uuid7

from core.wire import MAX_EVENT_TEXT, Event, EventKind
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


class Reason(StrEnum):
    """Why a suggestion ended unaccepted, or how an acceptance was seen (wire.Event.reason)."""

    TYPED_OVER = "typed_over"
    MOVED_AWAY = "moved_away"
    SUPERSEDED = "superseded"
    CLOSED = "closed"
    INFERRED = "inferred"


# -- states -------------------------------------------------------------------------------------


@dataclass(slots=True)
class TypingAlong:
    """Shown, not accepted: the suggestion's range holds the part of it produced so far."""

    # An edit brought two or more of its characters at once: the editor inserted or pasted them.
    in_one_piece: bool = False


@dataclass(slots=True)
class Acceptance:
    at: float
    # How much of the text was accepted (code points): all of it, or a prefix for a partial one.
    target: int
    delays: tuple[float, ...]
    checks_done: int = 0
    # The client dismissed it after accepting part of it: what was accepted is still followed,
    # the rest is never offered again.
    dismissed: bool = False


@dataclass(slots=True)
class Inserting:
    """Accepted; typed along until `acceptance.target` characters of it are there."""

    acceptance: Acceptance


@dataclass(slots=True)
class Following:
    """Accepted and there: the range is followed through every edit and measured."""

    acceptance: Acceptance


@dataclass(slots=True)
class Collecting:
    """Rejected or ignored: what is written in [start, end) until `due` is its rewrite."""

    start: int
    end: int
    due: float


@dataclass(slots=True)
class Ended:
    """Its last event has gone out: the tracker forgets it."""


State = TypingAlong | Inserting | Following | Collecting | Ended


# -- what can happen to a suggestion ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Show:
    pass


@dataclass(frozen=True, slots=True)
class Accept:
    """The first `count` characters (code points) accepted: by command, notification or inference."""

    count: int
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class Dismiss:
    pass


@dataclass(frozen=True, slots=True)
class Edited:
    edit: Edit


@dataclass(frozen=True, slots=True)
class Superseded:
    """A newer request elsewhere or a newer suggestion: the editor no longer shows this one."""


@dataclass(frozen=True, slots=True)
class Closed:
    """Its document closed, or the editor is going away."""


@dataclass(frozen=True, slots=True)
class Due:
    """A survival check or the end of the rewrite window may be due at `now`."""

    now: float


Signal = Show | Accept | Dismiss | Edited | Superseded | Closed | Due


@dataclass
class Suggestion:
    completion_id: str
    uri: str
    text: str
    # While typing along, end - start characters of the suggestion have been produced; once
    # accepted and there, the range being followed.
    range: Followed
    state: State
    shown_at: float | None = None

    @property
    def start(self) -> int:
        return self.range.start

    @property
    def end(self) -> int:
        return self.range.end

    @property
    def acceptance(self) -> Acceptance | None:
        return self.state.acceptance if isinstance(self.state, Inserting | Following) else None

    @property
    def accepted(self) -> bool:
        return self.acceptance is not None

    @property
    def accepted_so_far(self) -> int:
        return self.acceptance.target if self.acceptance is not None else 0


def produced_after(s: Suggestion, edit: Edit) -> int | None:
    """How much of the suggestion its region holds after `edit`, when the edit lies within what
    was produced so far (insertions at the spot included) and keeps it a prefix of the suggestion
    (or the suggestion a prefix of it: text beyond it, an auto-closed bracket, stays outside);
    None when the edit diverges from it."""
    r = s.range
    if not (r.start <= edit.start and edit.end <= r.end):
        return None
    produced = s.text[: r.end - r.start]
    now = produced[: edit.start - r.start] + edit.text + produced[edit.end - r.start :]
    if s.text.startswith(now) or now.startswith(s.text):
        return min(len(now), len(s.text))
    return None


class Tracker:
    def __init__(
        self,
        emit: Callable[[Event], None],
        text_of: Callable[[str], str | None],
        survival_delays_s: Sequence[float],
        *,
        rewrite_window_s: float,
        infer_shown: bool,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """The settings come from the session's Options, whose defaults are core.config.LspConfig's."""
        self._emit = emit
        self._text_of = text_of
        self._clock = clock
        self._wall_clock = wall_clock
        self.survival_delays_s = survival_delays_s
        self.rewrite_window_s = rewrite_window_s
        # False when the client sends flywheel/didShowCompletion itself.
        self.infer_shown = infer_shown
        self._suggestions: dict[str, Suggestion] = {}
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
        for s in self._in(TypingAlong):
            if s.uri != uri or s.end != offset:
                self._apply(s, Superseded())

    def served(self, completion_id: str, uri: str, offset: int, text: str) -> None:
        if not text or completion_id in self._suggestions:
            return
        # An editor shows one inline suggestion at a time: a new one replaces any still waiting.
        for s in self._in(TypingAlong):
            self._apply(s, Superseded())
        self._suggestions[completion_id] = Suggestion(
            completion_id, uri, text, Followed(offset, offset), TypingAlong()
        )
        if self.infer_shown:
            self.shown(completion_id)

    def shown(self, completion_id: str) -> None:
        if (s := self.get(completion_id)) is not None:
            self._apply(s, Show())

    def accept(self, completion_id: str) -> bool:
        """The accept command. False when the suggestion is unknown or already over."""
        if (s := self.get(completion_id)) is None:
            return False
        self._apply(s, Accept(len(s.text)))
        return True

    def partially_accept(self, completion_id: str, accepted_units: int) -> bool:
        """The client accepted the first `accepted_units` UTF-16 units of the suggestion."""
        if (s := self.get(completion_id)) is None:
            return False
        self._apply(s, Accept(code_points_for_units(s.text, accepted_units)))
        return True

    def reject(self, completion_id: str) -> bool:
        """The client dismissed the suggestion. Ignored once any of it was accepted."""
        if (s := self.get(completion_id)) is None:
            return False
        self._apply(s, Dismiss())
        return True

    def edit(self, uri: str, edit: Edit) -> None:
        for s in [s for s in self._suggestions.values() if s.uri == uri]:
            self._apply(s, Edited(edit))

    def uri_of(self, completion_id: str) -> str | None:
        """The document a followed suggestion was served for; None once it has ended. Its events go
        out before it ends."""
        s = self._suggestions.get(completion_id)
        return s.uri if s is not None else None

    def closed(self, uri: str) -> None:
        self._close([s for s in self._suggestions.values() if s.uri == uri])

    def close_all(self) -> None:
        """The editor is going away: everything ends as if its document closed."""
        self._close(list(self._suggestions.values()))

    def _close(self, suggestions: list[Suggestion]) -> None:
        # The suggestions on screen or followed first, then the rewrites: the order events went out in
        # before the tracker was a state machine.
        for s in sorted(suggestions, key=lambda s: isinstance(s.state, Collecting)):
            self._apply(s, Closed())

    def poll(self) -> float | None:
        """Run the survival checks and rewrite captures that are due; returns when the next one
        is (clock time). Cheap when nothing is due: it runs after every edit."""
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            _, completion_id = heapq.heappop(self._due)
            if (s := self._suggestions.get(completion_id)) is not None:
                self._apply(s, Due(now))
        while self._due and not self._scheduled(self._due[0][1]):
            heapq.heappop(self._due)  # ended early (closed, shut down): nothing left to run
        return self._due[0][0] if self._due else None

    def _scheduled(self, completion_id: str) -> bool:
        s = self._suggestions.get(completion_id)
        return s is not None and isinstance(s.state, Inserting | Following | Collecting)

    # -- the state machine --------------------------------------------------------------------

    def _apply(self, s: Suggestion, signal: Signal) -> None:
        s.state = self._step(s, signal)
        if isinstance(s.state, Ended):
            del self._suggestions[s.completion_id]

    def _step(self, s: Suggestion, signal: Signal) -> State:
        """Every transition: the state `s` is in next, after `signal`; the events go out here."""
        match s.state, signal:
            case TypingAlong() | Inserting() | Following(), Show() if s.shown_at is None:
                s.shown_at = self._clock()
                self._send(s.completion_id, EventKind.SHOWN)
                return s.state
            case TypingAlong() | Inserting() | Following(), Accept(count, why) if count > s.accepted_so_far:
                return self._accept(s, count, why)

            case TypingAlong() as along, Edited(edit) if (produced := produced_after(s, edit)) is not None:
                s.range.end = s.start + produced
                along.in_one_piece |= len(edit.text) > 1 and produced > 0
                if produced == len(s.text):
                    return self._accept(s, produced, Reason.INFERRED)
                return along
            case TypingAlong() as along, Edited(edit):
                touches = edit.start <= s.end and edit.end >= s.start
                return self._unaccepted(s, along, Reason.TYPED_OVER if touches else Reason.MOVED_AWAY, edit)
            case TypingAlong() as along, Superseded():
                return self._unaccepted(s, along, Reason.SUPERSEDED)
            case TypingAlong() as along, Closed():
                return self._unaccepted(s, along, Reason.CLOSED)
            case TypingAlong() as along, Dismiss():
                return self._unaccepted(s, along, None)

            case Inserting(acceptance), Edited(edit) if (produced := produced_after(s, edit)) is not None:
                # A partial acceptance follows its prefix only.
                s.range.end = s.start + min(produced, acceptance.target)
                return Following(acceptance) if produced >= acceptance.target else s.state
            case Inserting(acceptance), Edited(edit):
                # Accepted, but the editor inserted something else: follow what is there.
                follow(s.range, edit)
                return Following(acceptance)
            case Following(), Edited(edit):
                follow(s.range, edit)
                return s.state
            case Inserting(acceptance) | Following(acceptance), Dismiss():
                acceptance.dismissed = True
                return s.state
            case Inserting(acceptance) | Following(acceptance), Due(now):
                return self._survival_checks(s, acceptance, now)
            case Inserting(acceptance) | Following(acceptance), Closed():
                self._survival(s, self._clock() - acceptance.at, final=True)
                return Ended()

            case Collecting() as spot, Edited(edit):
                spot.start, spot.end = grow(spot.start, spot.end, edit)
                return spot
            case Collecting() as spot, Due(now) if spot.due <= now:
                self._send_rewrite(s, spot)
                return Ended()
            case Collecting() as spot, Closed():
                self._send_rewrite(s, spot)
                return Ended()

            case state, _:
                # Nothing changes: shown or accepted again, superseded once accepted, and so on.
                return state

    def _accept(self, s: Suggestion, count: int, reason: Reason | None = None) -> State:
        """Accept the first `count` characters: Following once they are there, else Inserting."""
        acceptance = s.acceptance
        if acceptance is None:
            acceptance = Acceptance(self._clock(), count, self._delays)
            if acceptance.delays:
                heapq.heappush(self._due, (acceptance.at + acceptance.delays[0], s.completion_id))
        acceptance.target = count
        partial = count < len(s.text)
        self._send(
            s.completion_id,
            EventKind.PARTIALLY_ACCEPTED if partial else EventKind.ACCEPTED,
            visible_ms=self._visible_ms(s),
            accepted_chars=utf16_units(s.text[:count]) if partial else None,
            reason=reason,
        )
        return self._accepted_state(s, acceptance)

    def _accepted_state(self, s: Suggestion, acceptance: Acceptance) -> State:
        count, produced = acceptance.target, s.end - s.start
        if isinstance(s.state, Following):
            if s.range.wiped or produced >= count or not self._untouched(s):
                return s.state
            # A partial acceptance already there, and untouched since, takes in what of the next
            # characters the editor inserted right after it (a client accepting word by word may
            # insert before it notifies) and types along the rest.
            there = (self._text_of(s.uri) or "")[s.start : s.start + count]
            s.range.end = s.start + max(common_prefix_length(there, s.text[:count]), produced)
        if s.end - s.start < count:
            return Inserting(acceptance)
        # Already typed along as far as accepted: follow it from here.
        s.range.end = s.start + count
        return Following(acceptance)

    def _unaccepted(
        self, s: Suggestion, along: TypingAlong, reason: Reason | None, edit: Edit | None = None
    ) -> State:
        """Rejected (reason None) or ignored. Part of it inserted in one piece is a partial
        acceptance instead; otherwise its spot is watched for a rewrite, when someone saw it."""
        produced = s.end - s.start
        if reason is not None and along.in_one_piece and 0 < produced < len(s.text):
            following = self._accept(s, produced)
            if edit is not None:
                follow(s.range, edit)
            if reason is Reason.CLOSED:
                self._survival(s, 0.0, final=True)
                return Ended()
            return following
        seen = s.shown_at is not None
        # Unseen, or nowhere left to watch: nothing can follow, so this event is the last.
        watch = seen and reason is not Reason.CLOSED and self.rewrite_window_s > 0
        fields: dict[str, Any] = {"visible_ms": self._visible_ms(s), "final": not watch}
        if reason is None:
            self._send(s.completion_id, EventKind.REJECTED, **fields)
        else:
            self._send(s.completion_id, EventKind.IGNORED, reason=reason, **fields)
        if not watch:
            return Ended()
        start, end = (s.start, s.end) if edit is None else grow(s.start, s.end, edit)
        spot = Collecting(start, end, self._clock() + self.rewrite_window_s)
        heapq.heappush(self._due, (spot.due, s.completion_id))
        return spot

    def _survival_checks(self, s: Suggestion, acceptance: Acceptance, now: float) -> State:
        a = acceptance
        ran = False
        while a.checks_done < len(a.delays) and a.at + a.delays[a.checks_done] <= now:
            delay = a.delays[a.checks_done]
            a.checks_done += 1
            ran = True
            last = a.checks_done == len(a.delays)
            self._survival(s, delay, final=last)
            if last:
                return Ended()
        if ran:
            heapq.heappush(self._due, (a.at + a.delays[a.checks_done], s.completion_id))
        return s.state

    # -- introspection ------------------------------------------------------------------------

    def get(self, completion_id: str) -> Suggestion | None:
        """The suggestion, while it is still on screen or followed (not once only its rewrite is)."""
        s = self._suggestions.get(completion_id)
        return None if s is None or isinstance(s.state, Collecting) else s

    def rewrite_of(self, completion_id: str) -> Collecting | None:
        s = self._suggestions.get(completion_id)
        return s.state if s is not None and isinstance(s.state, Collecting) else None

    def pending_at(self, uri: str, offset: int) -> Suggestion | None:
        """The suggestion still offered whose next character goes at this offset, if any, with
        text left to offer: the typed-ahead cache answers from it."""
        for s in self._suggestions.values():
            if s.uri != uri or s.end != offset or s.end - s.start >= len(s.text) or s.range.wiped:
                continue
            match s.state:
                case TypingAlong():
                    return s
                case Inserting(acceptance) if not acceptance.dismissed:
                    return s
                case Following(acceptance) if not acceptance.dismissed and self._untouched(s):
                    return s
        return None

    @property
    def waiting_count(self) -> int:
        return sum(1 for _ in self._in(TypingAlong))

    @property
    def accepted_count(self) -> int:
        return sum(1 for _ in self._in(Inserting, Following))

    @property
    def rewrite_count(self) -> int:
        return sum(1 for _ in self._in(Collecting))

    def _in(self, *states: type) -> Iterator[Suggestion]:
        # A list: callers end suggestions while they go through them.
        return iter([s for s in self._suggestions.values() if isinstance(s.state, states)])

    # -- measuring and sending ----------------------------------------------------------------

    def _untouched(self, s: Suggestion) -> bool:
        document = self._text_of(s.uri) or ""
        return document[s.start : s.end] == s.text[: s.end - s.start]

    def _survival(self, s: Suggestion, delay_s: float, *, final: bool) -> None:
        document = self._text_of(s.uri)
        current = "" if s.range.wiped or document is None else document[s.start : s.end]
        score = similarity(s.text, current)
        self._send(
            s.completion_id,
            EventKind.SURVIVAL,
            delay_s=round(max(delay_s, 0.0), 3),
            text=current[:MAX_EVENT_TEXT],
            similarity=score,
            retained_chars=round(score * len(s.text), 3),
            final=final,
        )

    def _send_rewrite(self, s: Suggestion, spot: Collecting) -> None:
        document = self._text_of(s.uri) or ""
        written = document[spot.start : spot.end]
        # What replaces the suggestion spans as many lines as it did; later lines are other work.
        written = "".join(written.splitlines(keepends=True)[: s.text.count("\n") + 1])
        if not s.text.endswith("\n"):
            written = written.rstrip("\r\n")
        fields = {"text": written[:MAX_EVENT_TEXT], "similarity": similarity(s.text, written)}
        self._send(s.completion_id, EventKind.REWRITE, final=True, **fields)

    def _visible_ms(self, s: Suggestion) -> float:
        # Never shown: visible for no time at all, so the backend does not train on it.
        if s.shown_at is None:
            return 0.0
        return round(max(self._clock() - s.shown_at, 0.0) * 1000.0, 1)

    def _send(self, completion_id: str, kind: EventKind, **fields: Any) -> None:
        try:
            event = Event(
                event_id=uuid7().hex,
                completion_id=completion_id,
                kind=kind,
                client_ts=self._wall_clock(),
                **fields,
            )
            self._emit(event)
        except Exception:
            # Losing one observation must not break the editor session.
            logger.exception("could not record %s event for %s", kind, completion_id)
