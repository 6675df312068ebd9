"""The retention job: now and then, delete events and contexts older than `retention_days`."""

from __future__ import annotations

import asyncio
import logging
import time

from backend.passes import RETENTION, PassHealth, repeat
from backend.store import Purged, Store
from core.config import Settings

log = logging.getLogger(__name__)


async def retain_once(store: Store, settings: Settings, now: float | None = None) -> dict[str, int]:
    cutoff = (time.time() if now is None else now) - settings.backend.retention_days * 86400
    async with store.exclusive(RETENTION) as mine:
        # Another backend on the same store is purging: its pass is this one's.
        purged = await store.purge_older_than(cutoff) if mine else Purged(events=0, completions=0)
    if purged["completions"]:
        log.info("retention: purged %(events)d events of %(completions)d completions", purged)
    return purged


async def run_retention(
    store: Store, settings: Settings, stop: asyncio.Event, health: PassHealth | None = None
) -> None:
    await repeat(
        lambda: retain_once(store, settings),
        health or PassHealth(RETENTION),
        settings.backend.retention_interval_s,
        stop,
    )
