"""Which pulled episodes an update trains on.

The seam for the guards of DESIGN.md (stale-version limits, per-user caps, a minimum number of
distinct users, inhuman-speed filters): each is one more reason here. For now only episodes that
cannot be trained on are dropped; episodes of any model version are kept, the importance ratio's
clip and cap bounding how far an older version's samples can push.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from backend.wire import Episode


@dataclass
class Selection:
    kept: list[Episode]
    # Reason → how many episodes were dropped for it.
    dropped: Counter[str] = field(default_factory=Counter)


def malformed(episode: Episode) -> str | None:
    """Why this episode cannot be trained on, or None."""
    if not episode.prompt_ids:
        return "empty_prompt"
    if not episode.completion_ids:
        return "empty_completion"
    if len(episode.token_logprobs) != len(episode.completion_ids):
        return "logprob_length"
    # A log-prob above 0 is no log-prob; the slack allows float rounding at probability 1.
    if not all(math.isfinite(x) and x <= 1e-4 for x in episode.token_logprobs):
        return "bad_logprob"
    if not math.isfinite(episode.reward):
        return "bad_reward"
    if not episode.temperature > 0:
        return "bad_temperature"
    return None


def select_episodes(episodes: list[Episode], live_version: str) -> Selection:
    # live_version is unused until the staleness guard lands; callers already pass it.
    del live_version
    selection = Selection(kept=[])
    for episode in episodes:
        reason = malformed(episode)
        if reason is None:
            selection.kept.append(episode)
        else:
            selection.dropped[reason] += 1
    return selection
