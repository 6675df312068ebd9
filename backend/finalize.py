"""The finalizer: every few seconds, close due observation windows into scored episodes."""

from __future__ import annotations

import asyncio
import logging
import time

from backend.store import Store
from flywheel.config import Settings

log = logging.getLogger(__name__)


async def finalize_once(store: Store, settings: Settings) -> int:
    return await store.finalize_due(
        time.time(),
        settings.episodes.window_s,
        settings.rewards,
        settings.episodes.min_visible_ms,
    )


async def run_finalizer(store: Store, settings: Settings, stop_event: asyncio.Event) -> None:
    """Finalize until `stop_event` is set; one last pass on the way out keeps shutdown lossless."""
    interval = settings.backend.finalize_interval_s
    while True:
        try:
            closed = await finalize_once(store, settings)
            if closed:
                log.debug("finalized %d episodes", closed)
        except Exception:
            # A failed pass (say, a locked database) must not end the loop; the next one retries.
            log.exception("finalize pass failed")
        if stop_event.is_set():
            return
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=interval)
        except TimeoutError:
            continue
