"""The finalizer: every few seconds, close due observation windows into scored episodes."""

from __future__ import annotations

import asyncio
import time

from backend.passes import FINALIZE, PassHealth, repeat
from backend.store import Store
from core.config import Settings


async def finalize_once(store: Store, settings: Settings) -> int:
    """One pass, unless another backend on the same store is running one (it closes the same
    windows; each closes once either way)."""
    async with store.exclusive(FINALIZE) as mine:
        if not mine:
            return 0
        return await store.finalize_due(
            time.time(),
            settings.episodes.window_s,
            settings.rewards,
            settings.episodes.min_visible_ms,
        )


async def run_finalizer(
    store: Store, settings: Settings, stop_event: asyncio.Event, health: PassHealth | None = None
) -> None:
    """Finalize until `stop_event` is set; one last pass on the way out keeps shutdown lossless."""
    await repeat(
        lambda: finalize_once(store, settings),
        health or PassHealth(FINALIZE),
        settings.backend.finalize_interval_s,
        stop_event,
        last_pass=True,
    )
