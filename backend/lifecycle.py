"""The checkpoint lifecycle: candidate → gated → canary → live → retired, or rejected / rolled back.

Every change of state goes through here, under one lock (this process's, and the store's for the
backends that share it), and is recorded in the store with its reason and figures before the
serving routes follow it. Backends that share a store each follow the registry (`follow`): a
transition made through one is served by all within `checkpoints.poll_s`. Routing changes install
adapters first, and a version routed away is removed once no request uses it
(backend/completions.py), so no request fails or waits on a swap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from backend import canary, checkpoints
from backend.completions import Completions
from backend.passes import CANARY, PassHealth, repeat
from backend.store import Store
from core.config import Settings
from core.wire import BASE_VERSION, CheckpointMetadata

log = logging.getLogger(__name__)

PINNED = "pinned_version"
# The store's lock for changes of state: one backend moves versions at a time.
CHANGES = "lifecycle"


class LifecycleError(ValueError):
    """A requested transition that does not apply; the message says why."""


class Lifecycle:
    def __init__(self, settings: Settings, store: Store, completions: Completions) -> None:
        self.settings = settings
        self.store = store
        self.completions = completions
        self.lock = asyncio.Lock()
        self.last_verdict: dict[str, Any] = {}

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """One change of state at a time: in this process, then among the backends on the store."""
        async with self.lock, self.store.exclusive(CHANGES, wait=True):
            yield

    async def canary_version(self) -> str | None:
        canaries = await self.store.versions_in("canary")
        return canaries[-1] if canaries else None

    async def apply_routing(self) -> None:
        """Make serving follow the store: live for everyone, the canary for its share of users."""
        live = await self.store.live_version()
        candidate = await self.canary_version()
        for version in (live, candidate):
            # Installing an installed adapter is a no-op that keeps it: asking the model process
            # is cheaper than a copy of its state that may lag behind it.
            if version not in (None, BASE_VERSION):
                path = await self.store.checkpoint_path(version)
                assert path is not None
                await self.completions.install(version, path)
        await self.completions.route(live, candidate, self.settings.canary.share if candidate else 0.0)

    async def take_upload(self, meta: CheckpointMetadata, files: dict[str, bytes], base_model: str) -> str:
        async with self._turn():
            checkpoints.validate_upload(files, meta, base_model)
            version = await self.store.next_version()
            path = await asyncio.to_thread(
                checkpoints.write_checkpoint, self.settings.checkpoints_dir, version, files, meta
            )
            await self.store.add_checkpoint(
                version, meta.parent_version, str(path), meta.metrics, reason="uploaded by trainer"
            )
            gate = meta.gate
            if gate is not None and not gate.passed:
                await self.store.transition(
                    version, "rejected", f"eval gate failed: {gate.reason}", {"gate": gate.model_dump()}
                )
                return version
            gate_reason = f"eval gate passed: {gate.reason}" if gate else "no eval gate ran (ungated)"
            await self.store.transition(
                version, "gated", gate_reason, {"gate": gate.model_dump() if gate else None}
            )
            try:
                await self.completions.install(version, path)
            except Exception as error:  # a file that passed the checks but does not fit the model
                await self.store.transition(version, "rejected", f"adapter failed to load: {error}")
                raise checkpoints.CheckpointError(f"adapter failed to load: {error}") from error
            if self.settings.canary.share <= 0:
                await self._make_live(version, "promoted on upload (canary share is 0)", {})
            else:
                previous = await self.canary_version()
                if previous is not None:
                    await self.store.transition(
                        previous, "retired", f"superseded by {version} before a verdict"
                    )
                share = self.settings.canary.share
                await self.store.transition(version, "canary", f"serving {share:.0%} of users as canary")
            await self.apply_routing()
            return version

    async def promote(self, version: str, reason: str, figures: dict[str, Any] | None = None) -> None:
        async with self._turn():
            info = await self.store.checkpoint(version)
            if info is None or info.state != "canary":
                raise LifecycleError(f"{version} is not the canary")
            await self._make_live(version, reason, {"canary": figures} if figures else {})
            await self.apply_routing()

    async def roll_back(self, version: str, reason: str, figures: dict[str, Any] | None = None) -> str:
        """Roll back the canary, or the live version (its predecessor goes live again). Returns live."""
        async with self._turn():
            info = await self.store.checkpoint(version)
            if info is None or info.state not in ("canary", "live"):
                raise LifecycleError(f"{version} is neither the canary nor live")
            await self.store.transition(version, "rolled_back", reason, {"rollback": figures or {}})
            if info.state == "live":
                entry = await self.store.entered(version, "live")
                predecessor = (entry or {}).get("metrics", {}).get("predecessor", BASE_VERSION)
                if predecessor != BASE_VERSION:
                    await self.store.transition(predecessor, "live", f"restored: {version} was rolled back")
                if await self.store.get_setting(PINNED) == version:
                    await self.store.set_setting(PINNED, None)
            await self.apply_routing()
            return await self.store.live_version()

    async def pin(self, version: str | None) -> None:
        """Pin `version` live (automatic verdicts pause until unpinned), or unpin with None."""
        async with self._turn():
            if version is not None and version != await self.store.live_version():
                info = await self.store.checkpoint(version)
                if info is None or info.state in ("candidate", "rejected"):
                    raise LifecycleError(f"{version} cannot be pinned (unknown, or never passed its gate)")
                await self._make_live(version, "pinned live by admin", {})
            await self.store.set_setting(PINNED, version)
            await self.apply_routing()

    async def _make_live(self, version: str, reason: str, metrics: dict[str, Any]) -> None:
        predecessor = await self.store.live_version()
        await self.store.transition(version, "live", reason, {**metrics, "predecessor": predecessor})

    async def evaluate(self) -> None:
        """One look at the figures: act on a canary verdict, and watch a freshly promoted live version."""
        if await self.store.get_setting(PINNED):
            return
        live = await self.store.live_version()
        candidate = await self.canary_version()
        config = self.settings.canary
        if candidate is not None:
            entry = await self.store.entered(candidate, "canary")
            since = entry["at"] if entry else 0.0
            verdict = canary.judge_canary(
                await self.store.arm(candidate, since), await self.store.arm(live, since), config
            )
            self.last_verdict = {"version": candidate, "verdict": verdict.action, **verdict.figures}
            if verdict.action == "promote":
                await self.promote(candidate, verdict.reason, verdict.figures)
                return
            if verdict.action == "roll_back":
                await self.roll_back(candidate, verdict.reason, verdict.figures)
                return
        if live == BASE_VERSION:
            return
        entry = await self.store.entered(live, "live")
        predecessor = (entry or {}).get("metrics", {}).get("predecessor")
        if entry is None or predecessor is None:
            return
        current = await self.store.arm(live, entry["at"])
        if current.reward.n >= config.watch_episodes:
            return
        previous_entry = await self.store.entered(predecessor, "live")
        previous = await self.store.arm(
            predecessor, previous_entry["at"] if previous_entry else 0.0, entry["at"]
        )
        verdict = canary.judge_live(current, previous, config)
        if verdict.action == "roll_back":
            await self.roll_back(live, verdict.reason, verdict.figures)

    async def evaluate_once(self) -> None:
        """`evaluate`, unless another backend on the same store is judging: one verdict, once."""
        async with self.store.exclusive(CANARY) as mine:
            if mine:
                await self.evaluate()

    async def run(self, stop: asyncio.Event, health: PassHealth | None = None) -> None:
        await repeat(self.evaluate_once, health or PassHealth(CANARY), self.settings.canary.interval_s, stop)

    async def follow_registry(self) -> bool:
        """Serve the live and canary versions the store names, if another backend moved them.
        Returns whether routing changed."""
        async with self.lock:
            live = await self.store.live_version()
            candidate = await self.canary_version()
            serving = self.completions.policy
            if (live, candidate) == (serving.live, serving.canary):
                return False
            log.info("registry moved: live %s, canary %s", live, candidate)
            await self.apply_routing()
            return True

    async def follow(self, stop: asyncio.Event) -> None:
        """Read the registry every `checkpoints.poll_s` until `stop` (backends sharing a store)."""
        await repeat(self.follow_registry, PassHealth("registry"), self.settings.checkpoints.poll_s, stop)
