"""The one place scalar reward is computed, from a completion's raw outcome events.

The store keeps every event as it arrived, so a changed RewardConfig (or a changed rule here) can
re-score old episodes: `Store.rescore` calls `score_episode` again on the stored events.

Rules are tried in order; the first that applies decides. See DESIGN.md, "Outcomes and the reward".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core import wire
from core.config import RewardConfig

Kind = wire.EventKind

# Outcomes stored beside the reward. Those with reward None are never served to the trainer.
ABSTAINED = "abstained"
NO_FEEDBACK = "no_feedback"
ACCEPTED = "accepted"
PARTIALLY_ACCEPTED = "partially_accepted"
REJECTED = "rejected"
IGNORED = "ignored"
UNSEEN = "unseen"
ACCEPTED_OUTCOMES = frozenset({ACCEPTED, PARTIALLY_ACCEPTED})


@dataclass(frozen=True, slots=True)
class Scored:
    outcome: str
    # None: not trained on (never shown, or not visible long enough to have been seen).
    reward: float | None
    # Similarity at the last survival check (or the accepted fraction when there was none).
    similarity: float | None = None
    # Shortest visible time before an acceptance, for the trainer's inhuman-speed filter.
    accept_visible_ms: float | None = None


@dataclass(frozen=True, slots=True)
class _Episode:
    """What the rules look at: one completion's text and events, and the scoring knobs."""

    text: str
    events: list[wire.Event]
    rewards: RewardConfig
    min_visible_ms: float

    def of(self, *kinds: Kind) -> list[wire.Event]:
        return [e for e in self.events if e.kind in kinds]


Rule = Callable[[_Episode], Scored | None]


def _abstained(ep: _Episode) -> Scored | None:
    """Empty text: the policy stayed silent, nothing was shown → rewards.abstained."""
    if ep.text:
        return None
    return Scored(ABSTAINED, ep.rewards.abstained)


def _no_feedback(ep: _Episode) -> Scored | None:
    """Text but no shown or terminal event: never displayed as far as we know → not trained on."""
    if ep.of(Kind.SHOWN, Kind.ACCEPTED, Kind.PARTIALLY_ACCEPTED, Kind.REJECTED, Kind.IGNORED):
        return None
    return Scored(NO_FEEDBACK, None)


def _accepted(ep: _Episode) -> Scored | None:
    """Accepted whole → s·accepted + (1−s)·rejected, s from the last survival check, else 1."""
    if not ep.of(Kind.ACCEPTED):
        return None
    return _acceptance(ep, ACCEPTED, fallback=1.0)


def _partially_accepted(ep: _Episode) -> Scored | None:
    """Accepted in part → same formula; without a survival check s = accepted share of the text."""
    partial = ep.of(Kind.PARTIALLY_ACCEPTED)
    if not partial:
        return None
    # Word-by-word acceptance sends one event per step: the furthest one counts.
    chars = [e.accepted_chars for e in partial if e.accepted_chars is not None]
    fallback = min(1.0, max(chars) / _utf16_len(ep.text)) if chars else None
    return _acceptance(ep, PARTIALLY_ACCEPTED, fallback=fallback)


def _rejected(ep: _Episode) -> Scored | None:
    """Dismissed → rewards.rejected if visible ≥ min_visible_ms (unknown counts as seen), else unseen."""
    events = ep.of(Kind.REJECTED)
    return _penalty(ep, REJECTED, events) if events else None


def _ignored(ep: _Episode) -> Scored | None:
    """Typed over, moved away, superseded, closed → like a rejection, with the same visibility rule."""
    events = ep.of(Kind.IGNORED)
    return _penalty(ep, IGNORED, events) if events else None


def _shown_without_end(ep: _Episode) -> Scored | None:
    """Shown, but no terminal event by window end → ignored; how long it stayed visible is unknown."""
    # The shown event's own visible_ms is the time at display (about 0), not the time on screen.
    return _penalty(ep, IGNORED, [])


# Order matters: the first rule that returns a score decides.
RULES: tuple[Rule, ...] = (
    _abstained,
    _no_feedback,
    _accepted,
    _partially_accepted,
    _rejected,
    _ignored,
    _shown_without_end,
)


def score_episode(
    text: str, events: list[wire.Event], rewards: RewardConfig, min_visible_ms: float
) -> Scored:
    """Turn one completion's text and outcome events into its outcome and scalar reward."""
    episode = _Episode(text, events, rewards, min_visible_ms)
    for rule in RULES:
        scored = rule(episode)
        if scored is not None:
            return scored
    raise AssertionError("the last rule always applies")  # pragma: no cover


def _acceptance(ep: _Episode, outcome: str, fallback: float | None) -> Scored:
    accepts = ep.of(Kind.ACCEPTED, Kind.PARTIALLY_ACCEPTED)
    visible = [e.visible_ms for e in accepts if e.visible_ms is not None]
    accept_visible_ms = min(visible) if visible else None
    s = _last_survival(ep.events)
    if s is None:
        s = fallback
    if s is None:
        # A partial acceptance of unknown length and no survival check: no honest reward.
        return Scored(outcome, None, None, accept_visible_ms)
    reward = acceptance_reward(s, ep.rewards)
    return Scored(outcome, reward, s, accept_visible_ms)


def acceptance_reward(share: float, rewards: RewardConfig) -> float:
    """An accepted suggestion of which `share` survived: s·accepted + (1−s)·rejected."""
    return share * rewards.accepted + (1.0 - share) * rewards.rejected


def retained_share(reward: float, rewards: RewardConfig) -> float:
    """s of an accepted episode, back from its reward = s·accepted + (1−s)·rejected."""
    span = rewards.accepted - rewards.rejected
    return min(max((reward - rewards.rejected) / span, 0.0), 1.0) if span else 0.0


def kept_characters(outcome: str, reward: float, text: str, rewards: RewardConfig) -> float:
    """Characters of a suggestion its user accepted and kept (s of its text); 0 unless accepted."""
    return retained_share(reward, rewards) * len(text) if outcome in ACCEPTED_OUTCOMES else 0.0


def _last_survival(events: list[wire.Event]) -> float | None:
    """Similarity at the latest survival check: largest delay_s, ties broken by client_ts."""
    last = _last_check(events, lambda e: e.similarity is not None)
    return last.similarity if last else None


def _last_check(events: list[wire.Event], has: Callable[[wire.Event], bool]) -> wire.Event | None:
    checks = [e for e in events if e.kind == Kind.SURVIVAL and has(e)]
    if not checks:
        return None
    return max(checks, key=lambda e: (e.delay_s if e.delay_s is not None else 0.0, e.client_ts))


def user_wrote(text: str, events: list[wire.Event]) -> str | None:
    """What the user wanted where `text` was suggested, as far as the events say: what they wrote
    at the spot instead (the latest rewrite), else the text in the accepted range at the latest
    survival check when it differs from the suggestion. None when neither says (Episode.rewrite)."""
    rewrites = [e for e in events if e.kind == Kind.REWRITE and e.text]
    if rewrites:
        return max(rewrites, key=lambda e: e.client_ts).text
    survived = _last_check(events, lambda e: e.text is not None)
    if survived is not None and survived.text and survived.text != text:
        return survived.text
    return None


def _penalty(ep: _Episode, outcome: str, events: list[wire.Event]) -> Scored:
    # Several terminal events of one kind (a client may report more than one): the longest view counts.
    visible = [e.visible_ms for e in events if e.visible_ms is not None]
    seen = not visible or max(visible) >= ep.min_visible_ms
    return Scored(outcome if seen else UNSEEN, ep.rewards.rejected if seen else None)


def _utf16_len(text: str) -> int:
    # accepted_chars is in UTF-16 code units, as LSP positions are.
    return len(text.encode("utf-16-le")) // 2
