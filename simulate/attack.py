"""The attacker of `flywheel simulate --attacker`: one person at a set share of the training traffic,
and how much of each trainer update came from them.

One person means one token. To make up `share` of a round's requests beside several honest
developers the attacker writes through as many editors (language-server sessions, all on that one
token) as it takes to keep pace, and a `Pace` holds its requests to share / (1 − share) of the
others' so far: at the end of the round its share of the requests is `share`, to one request.
A many-ids attacker also sends a fresh user id (the client's hint) with every file it opens.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import TrainerConfig
from core.wire import Episode
from simulate.corpus import SourceFile
from simulate.developer import Developer, TypingStats
from simulate.editor import Editor
from simulate.profiles import Profile
from trainer.cycle import MIN_EPISODES_TO_HOLD_OUT
from trainer.gate import split_heldout
from trainer.selection import select_episodes


class Pace:
    """Requests of one writer held to `share` of all requests in a round: it may ask while its count
    stays below share / (1 − share) of the others' so far; it waits while the others are still
    writing, and is done once they have finished and its count has caught up."""

    def __init__(self, share: float) -> None:
        self.ratio = share / (1.0 - share)
        self.others = 0
        self.mine = 0
        self.others_done = False
        self._changed = asyncio.Condition()

    def _allowed(self) -> bool:
        # Nearest whole request to the share, not always below it.
        return self.mine < math.floor(self.ratio * self.others + 0.5)

    @property
    def over(self) -> bool:
        return self.others_done and not self._allowed()

    async def other(self) -> bool:
        """One of the others asks (they are never held back)."""
        async with self._changed:
            self.others += 1
            self._changed.notify_all()
        return True

    async def finish_others(self) -> None:
        async with self._changed:
            self.others_done = True
            self._changed.notify_all()

    async def take(self) -> bool:
        """Wait for the writer's turn to ask; False: the round is over for it."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._allowed() or self.others_done)
            if not self._allowed():
                return False
            self.mine += 1
            return True


def editors_needed(share: float, others: int) -> int:
    """Editors an attacker needs to keep pace with `others` developers at `share` of the requests,
    each editor asking about as often as one of them."""
    return max(1, math.ceil(share / (1.0 - share) * others))


@dataclass
class Attacker:
    user_id: str
    # The pseudonym of its one token: every episode of every editor of it is filed under it.
    person: str
    profile: Profile
    share: float
    lanes: list[Developer]
    # The user ids it sent (many-ids: one per file).
    hints: list[str] = field(default_factory=list)

    @property
    def editors(self) -> list[Editor]:
        return [lane.editor for lane in self.lanes]

    async def write_round(
        self, tag: str, seed: int, files: Sequence[SourceFile], workspace: Path, pace: Pace
    ) -> TypingStats:
        """Each editor writes the round's files over and over (new seeds each pass) until `pace`
        says the round is over; returns what all of them did."""

        async def lane(index: int, developer: Developer) -> TypingStats:
            stats = TypingStats()
            for turn in itertools.count():
                source = files[turn % len(files)]
                name = f"{self.user_id}-{index}-{turn}-{source.name}"
                if self.profile.fresh_id_per_file:
                    hint = f"sim-{uuid.uuid4().hex[:12]}"
                    self.hints.append(hint)
                    developer.editor.configure({"userId": hint})
                rng = random.Random(f"{seed}:{tag}:{name}")
                uri = (workspace / self.user_id / name).resolve().as_uri()
                stats.add(await developer.write(uri, source.text, rng, source.header, pace.take))
                if pace.over:
                    break
            await developer.editor.drain()
            return stats

        total = TypingStats()
        for stats in await asyncio.gather(*(lane(i, d) for i, d in enumerate(self.lanes))):
            total.add(stats)
        return total


def trained_on(
    episodes: list[dict[str, Any]], live_version: str, config: TrainerConfig
) -> tuple[list[Episode], list[Episode]]:
    """(kept by the guards, trained on) among the episodes a trainer cycle read: the trainer's own
    selection and held-out split (trainer/cycle.py), replayed, since its report gives counts only."""
    parsed = [Episode.model_validate(e) for e in episodes]
    kept = select_episodes(parsed, live_version, config.guards).kept
    if config.gate.enabled and len(kept) >= MIN_EPISODES_TO_HOLD_OUT:
        return kept, split_heldout(kept, config.gate.heldout_share)[0]
    return kept, kept


def share_of(person: str, episodes: Sequence[Episode]) -> float | None:
    return sum(e.user_id == person for e in episodes) / len(episodes) if episodes else None
