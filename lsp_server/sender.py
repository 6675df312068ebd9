"""Drains the outbox to the backend in the background, in batches, with backoff on failure.

Only the backend's word on an event removes it: a 200 that accounts for every event of the batch
(each stored, a duplicate, or refused by name). Any other answer, from the backend or from whatever
stands between (a proxy's 405 or 407, a 413, a 401 for a stale token, an HTML error page, a timeout)
says nothing about the events, so they stay and go again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from lsp_server.backend_client import AUTH_STATUSES, BackendError
from lsp_server.outbox import Outbox

logger = logging.getLogger(__name__)

# Below wire.MAX_EVENTS_PER_BATCH, so a batch is never refused for its size.
BATCH_SIZE = 500

SendEvents = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class Fate(enum.Enum):
    SETTLED = "settled"  # the backend gave each event's fate: remove them all
    SPLIT = "split"  # too large for someone on the way: send again in halves
    KEPT = "kept"  # the answer says nothing about the events: keep them all, retry later


def fate(events: list[dict[str, Any]], outcome: dict[str, Any] | BackendError) -> Fate:
    """What a batch's answer (or failure) means for its events. The one rule of the outbox."""
    if isinstance(outcome, BackendError):
        return Fate.SPLIT if outcome.status == 413 and len(events) > 1 else Fate.KEPT
    return Fate.SETTLED if refused_indexes(events, outcome) is not None else Fate.KEPT


def refused_indexes(events: list[dict[str, Any]], answer: dict[str, Any]) -> set[int] | None:
    """The positions of the events `answer` refuses by name, when it accounts for every event of
    the batch; None when it does not (then it is not the backend's word on this batch)."""
    named: set[int] = set()
    for refusal in answer.get("refused", []):
        index = refusal.get("index")
        if not isinstance(index, int) or not 0 <= index < len(events):
            return None
        # The backend names the id it read; None when the event's id itself was unreadable.
        if refusal.get("event_id") not in (None, events[index].get("event_id")):
            return None
        named.add(index)
    stored, duplicates = answer.get("stored"), answer.get("duplicates")
    if not isinstance(stored, int) or not isinstance(duplicates, int):
        return None
    return named if stored + duplicates + len(named) == len(events) else None


class OutboxSender:
    def __init__(
        self,
        outbox: Outbox,
        send: SendEvents,
        *,
        interval_s: float,
        enabled: Callable[[], bool] = lambda: True,
        batch_size: int = BATCH_SIZE,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        auth_retry_s: float = 120.0,
    ) -> None:
        self.outbox = outbox
        self._send = send
        self._enabled = enabled
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.auth_retry_s = auth_retry_s
        self.failures = 0
        self.delivered = 0
        # Events the backend refused by name (a 200 whose `refused` lists them): dropped.
        self.refused = 0
        # Events the backend already had (a resend after a lost answer): harmless, counted.
        self.duplicates = 0
        self._wake = asyncio.Event()
        # One batch in flight: a flush while the loop sends would send the same rows twice.
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flywheel-outbox")

    def wake(self) -> None:
        """Send now rather than at the next interval or the end of a backoff (a new token or URL)."""
        self._wake.set()

    async def stop(self, flush_timeout_s: float) -> None:
        """Stop the loop, then try once more to deliver what is left, within the timeout;
        whatever stays in the outbox goes out on the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._enabled():
            return
        try:
            await asyncio.wait_for(self.drain(), flush_timeout_s)
        except Exception as exc:
            logger.info("events left in the outbox for the next start: %s", _describe(exc))

    async def drain(self) -> None:
        while await self.send_batch():
            pass

    async def send_batch(self) -> bool:
        """Deliver the oldest batch. True when a full batch went out (more may be waiting).
        Raises when the backend could not be reached or did not settle the batch."""
        async with self._sending:
            batch = self.outbox.peek(self.batch_size)
            if not batch:
                return False
            await self._deliver(batch)
            return len(batch) == self.batch_size

    async def _deliver(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        events = [event for _, event in rows]
        try:
            outcome: dict[str, Any] | BackendError = await self._send(events)
        except BackendError as exc:
            outcome = exc
        verdict = fate(events, outcome)
        if verdict is Fate.SPLIT:
            middle = len(rows) // 2
            await self._deliver(rows[:middle])
            await self._deliver(rows[middle:])
            return
        if isinstance(outcome, BackendError):
            raise outcome
        if verdict is Fate.KEPT:
            raise BackendError(f"an events answer that does not account for the batch: {str(outcome)[:200]}")
        refused = refused_indexes(events, outcome) or set()
        for refusal in outcome.get("refused", []):
            logger.warning(
                "backend refused event %s, dropped: %s", refusal.get("event_id"), refusal.get("reason")
            )
        self.outbox.remove([row_id for row_id, _ in rows])
        self.delivered += len(rows) - len(refused)
        self.refused += len(refused)
        self.duplicates += outcome["duplicates"]

    async def _run(self) -> None:
        while True:
            delay = self.interval_s
            if self._enabled():
                try:
                    more = await self.send_batch()
                    if self.failures:
                        logger.info("event delivery works again")
                    self.failures = 0
                    if more:
                        delay = 0.0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failures += 1
                    if self.failures == 1:
                        logger.warning("could not deliver events, kept for a retry: %s", _describe(exc))
                    delay = self._backoff_s(exc)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    def _backoff_s(self, exc: Exception) -> float:
        # Refused credentials do not heal in a second: the user has to fix the token, so ask seldom.
        if isinstance(exc, BackendError) and exc.status in AUTH_STATUSES:
            ceiling = self.auth_retry_s
            return random.uniform(ceiling / 2, ceiling)
        # Full jitter keeps many editors from retrying in step after an outage.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**self.failures))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
