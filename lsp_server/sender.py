"""Drains the outbox to the backend in the background, in batches, with backoff on failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from lsp_server.backend_client import BackendError
from lsp_server.outbox import Outbox

logger = logging.getLogger(__name__)

# Below wire.MAX_EVENTS_PER_BATCH, so a batch is never refused for its size.
BATCH_SIZE = 500

# 4xx answers that say nothing about the batch (auth, a wrong URL, rate limits): retried like 5xx.
# Any other 4xx means the batch itself is bad, and sending it again would be refused again.
RETRY_CLIENT_ERRORS = frozenset({401, 403, 404, 408, 409, 425, 429})

SendEvents = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class OutboxSender:
    def __init__(
        self,
        outbox: Outbox,
        send: SendEvents,
        *,
        enabled: Callable[[], bool] = lambda: True,
        interval_s: float = 1.0,
        batch_size: int = BATCH_SIZE,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
    ) -> None:
        self.outbox = outbox
        self._send = send
        self._enabled = enabled
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.failures = 0
        self.delivered = 0
        # Events the backend refused outright (a batch it answered 4xx, narrowed down to them).
        self.refused = 0
        # Events the backend already had (a resend after a lost answer): harmless, counted.
        self.duplicates = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flywheel-outbox")

    def wake(self) -> None:
        """Send now rather than at the next interval (ignored while backing off)."""
        self._wake.set()

    async def stop(self, flush_timeout_s: float = 1.0) -> None:
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
        Raises when the backend could not be reached or did not confirm."""
        batch = self.outbox.peek(self.batch_size)
        if not batch:
            return False
        await self._deliver(batch)
        return len(batch) == self.batch_size

    async def _deliver(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        """Send rows and remove them once settled. A batch refused as a whole (4xx) is split in
        halves until the bad events are alone; those are dropped with a log, the rest delivered."""
        try:
            answer = await self._send([event for _, event in rows])
        except BackendError as exc:
            if not _batch_is_bad(exc.status):
                raise
            if len(rows) > 1:
                middle = len(rows) // 2
                await self._deliver(rows[:middle])
                await self._deliver(rows[middle:])
                return
            row_id, event = rows[0]
            logger.error("backend refuses event %s, dropping it: %s", event.get("event_id"), exc)
            self.outbox.remove([row_id])
            self.refused += 1
            return
        # Stored, duplicate and refused events are all settled: the backend has seen them, and
        # a refused one would be refused again.
        for refused in answer.get("refused", []):
            logger.warning("backend refused event %s: %s", refused.get("event_id"), refused.get("reason"))
        self.outbox.remove([row_id for row_id, _ in rows])
        self.delivered += len(rows)
        self.duplicates += int(answer.get("duplicates", 0))

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
                        logger.warning("could not deliver events, will retry: %s", _describe(exc))
                    # Full jitter keeps many editors from retrying in step after an outage.
                    delay = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**self.failures))
                    await asyncio.sleep(delay)
                    continue
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()


def _batch_is_bad(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status not in RETRY_CLIENT_ERRORS


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
