"""What the language server tells the backend's show policy with each request (core/show_policy.py
ShowSignals): of this document's last RECENT_WINDOW shown suggestions how many were shown and how
many accepted (wholly or in part), and how long ago the user last changed it.

Only numbers leave the machine, never code. Outcomes come from the tracker's events (shown,
accepted, partially accepted), so they are known only for suggestions the tracker follows, i.e.
with telemetry on; the time since the last change is known either way.
"""

from __future__ import annotations

import time
from collections import deque

from core.show_policy import RECENT_WINDOW, ShowSignals
from core.wire import Event, EventKind

_ACCEPTED = (EventKind.ACCEPTED, EventKind.PARTIALLY_ACCEPTED)
# An acceptance counts as shown too: a client that reports showing may accept what it never reported.
_COUNTED = (EventKind.SHOWN, *_ACCEPTED)


class _Document:
    def __init__(self) -> None:
        # Completion ids of its last shown suggestions, oldest first.
        self.shown: deque[str] = deque(maxlen=RECENT_WINDOW)
        self.accepted: set[str] = set()
        # time.monotonic() of the user's last change; None: none since it was opened.
        self.changed_at: float | None = None


class RecentOutcomes:
    """Each open document's recent outcomes and last change, for ShowSignals."""

    def __init__(self) -> None:
        self._documents: dict[str, _Document] = {}

    def opened(self, uri: str) -> None:
        self._documents[uri] = _Document()

    def changed(self, uri: str) -> None:
        if (document := self._documents.get(uri)) is not None:
            document.changed_at = time.monotonic()

    def observe(self, event: Event, uri: str | None) -> None:
        """An event about a suggestion served for `uri` (the tracker's, which knows its document)."""
        if event.kind not in _COUNTED or uri is None:
            return
        document = self._documents.get(uri)
        if document is None:
            return
        if event.completion_id not in document.shown:
            if len(document.shown) == RECENT_WINDOW:
                document.accepted.discard(document.shown[0])
            document.shown.append(event.completion_id)
        if event.kind in _ACCEPTED:
            document.accepted.add(event.completion_id)

    def closed(self, uri: str) -> None:
        self._documents.pop(uri, None)

    def signals(self, uri: str) -> ShowSignals:
        document = self._documents.get(uri) or _Document()
        changed_at = document.changed_at
        return ShowSignals(
            recent_shown=len(document.shown),
            recent_accepted=len(document.accepted),
            since_keystroke_ms=None if changed_at is None else (time.monotonic() - changed_at) * 1000,
        )
