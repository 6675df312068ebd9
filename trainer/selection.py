"""Which pulled episodes an update trains on: the guards against bad signals and reward hacking.

In order, each dropped episode counted under its reason:
    malformed        cannot be trained on (no prompt, mismatched log-probs, …)
    stale            served by a version more than `max_version_lag` behind the live one
    inhuman_speed    accepted faster than a person can read the suggestion
    inhuman_user     every episode of a user whose accepts are mostly inhuman-speed (a bot)
    delete_outlier   every episode of a user whose accept-then-delete share is an outlier
    user_cap         a user's episodes beyond their share (or count) cap, newest kept
    too_few_users    everything, when fewer than `min_users` distinct users remain
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from core.config import GuardConfig
from core.wire import BASE_VERSION, Episode

ACCEPTED = frozenset({"accepted", "partially_accepted"})


@dataclass
class Selection:
    kept: list[Episode]
    # Reason → how many episodes were dropped for it.
    dropped: Counter[str] = field(default_factory=Counter)

    def drop(self, episodes: list[Episode], reason: str) -> None:
        if episodes:
            self.dropped[reason] += len(episodes)


def malformed(episode: Episode) -> str | None:
    """Why this episode cannot be trained on, or None."""
    if episode.decision is not None and not episode.decision.called:
        # The show policy's trigger answered without calling the model: nothing was sampled.
        return "skipped"
    if not episode.prompt_ids:
        return "empty_prompt"
    if not episode.completion_ids:
        # Serving sampled something and did not show it (the version's cut or confidence floor):
        # nothing was shown, so there is no outcome to credit the sampled tokens with.
        return "withheld" if not episode.text else "empty_completion"
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


def version_number(version: str) -> int | None:
    """'base' → 0, 'v12' → 12; None for names outside the backend's scheme."""
    if version == BASE_VERSION:
        return 0
    if version.startswith("v") and version[1:].isdigit():
        return int(version[1:])
    return None


def is_stale(episode: Episode, live: int | None, max_lag: int) -> bool:
    served = version_number(episode.model_version)
    # Unknown names cannot be ordered: keep them, the ratio clip bounds what they can do.
    return live is not None and served is not None and live - served > max_lag


def is_inhuman(episode: Episode, config: GuardConfig) -> bool:
    if episode.outcome not in ACCEPTED or episode.accept_visible_ms is None:
        return False
    reading_ms = config.min_accept_ms + config.accept_ms_per_char * len(episode.text)
    return episode.accept_visible_ms < reading_ms


def _by_user(episodes: list[Episode]) -> dict[str, list[Episode]]:
    users: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        users[episode.user_id].append(episode)
    return users


def _bots(episodes: list[Episode], config: GuardConfig) -> set[str]:
    """Users most of whose accepts came faster than a person reads."""
    bots = set()
    for user, mine in _by_user(episodes).items():
        accepts = [e for e in mine if e.outcome in ACCEPTED and e.accept_visible_ms is not None]
        if accepts and sum(is_inhuman(e, config) for e in accepts) / len(accepts) > config.inhuman_user_share:
            bots.add(user)
    return bots


def _delete_outliers(episodes: list[Episode], config: GuardConfig) -> set[str]:
    """Users whose share of accepted-then-deleted suggestions (reward below 0 after an accept: less
    survived than break-even) stands out from the other users'. Needs three users to have a median."""
    rates = {}
    for user, mine in _by_user(episodes).items():
        accepts = [e for e in mine if e.outcome in ACCEPTED]
        if len(accepts) >= config.delete_min_accepts:
            rates[user] = sum(e.reward < 0 for e in accepts) / len(accepts)
    if len(rates) < 3:
        return set()
    median = statistics.median(rates.values())
    return {user for user, rate in rates.items() if rate > median + config.delete_outlier_margin}


def _cap_users(episodes: list[Episode], config: GuardConfig) -> tuple[list[Episode], list[Episode]]:
    """Each user's episodes beyond the cap (the newest are kept); returns (kept, dropped)."""
    users = _by_user(episodes)
    caps = {user: min(len(mine), config.max_user_episodes) for user, mine in users.items()}
    if len(users) >= 2 and config.max_user_share < 1.0:
        # Largest count k with k ≤ share · (k + others): k ≤ share / (1 − share) · others.
        ratio = config.max_user_share / (1.0 - config.max_user_share)
        total = sum(caps.values())
        for user in users:
            others = total - caps[user]
            caps[user] = min(caps[user], max(1, math.floor(ratio * others)))
    kept_ids = set()
    for user, mine in users.items():
        kept_ids.update(id(e) for e in sorted(mine, key=lambda e: e.seq)[len(mine) - caps[user] :])
    kept = [e for e in episodes if id(e) in kept_ids]
    dropped = [e for e in episodes if id(e) not in kept_ids]
    return kept, dropped


def select_episodes(
    episodes: list[Episode], live_version: str, config: GuardConfig | None = None
) -> Selection:
    config = config or GuardConfig()
    live = version_number(live_version)
    selection = Selection(kept=[])
    kept = []
    for episode in episodes:
        reason = malformed(episode)
        if reason is None and is_stale(episode, live, config.max_version_lag):
            reason = "stale"
        if reason is None:
            kept.append(episode)
        else:
            selection.dropped[reason] += 1

    bots = _bots(kept, config)
    selection.drop([e for e in kept if e.user_id in bots], "inhuman_user")
    kept = [e for e in kept if e.user_id not in bots]
    selection.drop([e for e in kept if is_inhuman(e, config)], "inhuman_speed")
    kept = [e for e in kept if not is_inhuman(e, config)]

    outliers = _delete_outliers(kept, config)
    selection.drop([e for e in kept if e.user_id in outliers], "delete_outlier")
    kept = [e for e in kept if e.user_id not in outliers]

    kept, capped = _cap_users(kept, config)
    selection.drop(capped, "user_cap")
    if len({e.user_id for e in kept}) < config.min_users:
        selection.drop(kept, "too_few_users")
        kept = []
    selection.kept = kept
    return selection
