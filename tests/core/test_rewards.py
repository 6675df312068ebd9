"""The reward rules of DESIGN.md's table, one row per case, with the numbers worked out."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from core import wire
from core.config import RewardConfig
from core.rewards import Scored, score_episode

_ids = itertools.count()
TEXT = "abcdefghij"  # 10 characters, so accepted_chars / 10 is easy to read


def ev(kind: str, **fields: Any) -> wire.Event:
    fields.setdefault("client_ts", 1000.0 + next(_ids))
    return wire.Event(event_id=f"evt-{next(_ids):08d}", completion_id="c1", kind=kind, **fields)


def survival(similarity: float, delay_s: float, **fields: Any) -> wire.Event:
    return ev("survival", similarity=similarity, delay_s=delay_s, **fields)


DEFAULT = RewardConfig()
CASES: list[tuple[str, str, list[wire.Event], RewardConfig, Scored]] = [
    ("abstained", "", [], DEFAULT, Scored("abstained", 0.0)),
    ("abstained, custom reward", "", [], RewardConfig(abstained=0.1), Scored("abstained", 0.1)),
    ("text but no events: never shown", TEXT, [], DEFAULT, Scored("no_feedback", None)),
    (
        "accepted, no survival check: s = 1",
        TEXT,
        [ev("shown"), ev("accepted", visible_ms=900)],
        DEFAULT,
        Scored("accepted", 0.75, 1.0, 900),
    ),
    (
        "accepted, last survival s = 0.6: 0.6·0.75 + 0.4·(−0.25) = 0.35",
        TEXT,
        # Arrival order is not check order: the largest delay decides.
        [
            ev("accepted", visible_ms=500),
            survival(0.6, 600),
            survival(0.9, 30),
            survival(0.2, 120),
        ],
        DEFAULT,
        Scored("accepted", 0.35, 0.6, 500),
    ),
    (
        "accepted, survival checks tied on delay: the later client_ts wins",
        TEXT,
        [
            ev("accepted"),
            survival(0.0, 600, client_ts=5000.0),
            survival(0.6, 600, client_ts=5001.0),
        ],
        DEFAULT,
        Scored("accepted", 0.35, 0.6),
    ),
    (
        "accepted, then all of it deleted: s = 0 → the rejection penalty",
        TEXT,
        [ev("accepted"), survival(0.0, 30)],
        DEFAULT,
        Scored("accepted", -0.25, 0.0),
    ),
    (
        "partially accepted, 4 of 10 chars, no survival: s = 0.4 → 0.15",
        TEXT,
        [ev("partially_accepted", accepted_chars=4, visible_ms=700)],
        DEFAULT,
        Scored("partially_accepted", 0.15, 0.4, 700),
    ),
    (
        "partially accepted word by word: the furthest step counts (5/10 → 0.25)",
        TEXT,
        [
            ev("partially_accepted", accepted_chars=2, visible_ms=300),
            ev("partially_accepted", accepted_chars=5, visible_ms=800),
        ],
        DEFAULT,
        Scored("partially_accepted", 0.25, 0.5, 300),
    ),
    (
        "partially accepted with a survival check: survival s = 0.8 → 0.55",
        TEXT,
        [ev("partially_accepted", accepted_chars=4), survival(0.8, 30)],
        DEFAULT,
        Scored("partially_accepted", 0.55, 0.8),
    ),
    (
        "partially accepted, length in UTF-16 code units: 3 of 5 → 0.35",
        "é😀ab",  # é = 1 unit, 😀 = 2 units (a surrogate pair), a, b
        [ev("partially_accepted", accepted_chars=3)],
        DEFAULT,
        Scored("partially_accepted", 0.35, 0.6),
    ),
    (
        "partially accepted, length unknown and no survival: not trained on",
        TEXT,
        [ev("partially_accepted")],
        DEFAULT,
        Scored("partially_accepted", None),
    ),
    (
        "partial steps then a full accept: accepted; the fastest acceptance is kept",
        TEXT,
        [ev("partially_accepted", accepted_chars=3, visible_ms=120), ev("accepted", visible_ms=300)],
        DEFAULT,
        Scored("accepted", 0.75, 1.0, 120),
    ),
    (
        "rejected after being seen",
        TEXT,
        [ev("shown"), ev("rejected", visible_ms=1200)],
        DEFAULT,
        Scored("rejected", -0.25),
    ),
    (
        "rejected exactly at min_visible_ms counts as seen",
        TEXT,
        [ev("rejected", visible_ms=250)],
        DEFAULT,
        Scored("rejected", -0.25),
    ),
    (
        "rejected, visible time unknown: counted as seen",
        TEXT,
        [ev("rejected")],
        DEFAULT,
        Scored("rejected", -0.25),
    ),
    (
        "rejected too quickly to have been seen",
        TEXT,
        [ev("shown"), ev("rejected", visible_ms=100)],
        DEFAULT,
        Scored("unseen", None),
    ),
    (
        "ignored (typed over) after being seen",
        TEXT,
        [ev("ignored", reason="typed_over", visible_ms=800)],
        DEFAULT,
        Scored("ignored", -0.25),
    ),
    (
        "superseded before it could be seen",
        TEXT,
        [ev("shown"), ev("ignored", reason="superseded", visible_ms=40)],
        DEFAULT,
        Scored("unseen", None),
    ),
    (
        "shown, then nothing until the window closed: ignored",
        TEXT,
        [ev("shown", visible_ms=0)],
        DEFAULT,
        Scored("ignored", -0.25),
    ),
    (
        "an acceptance outranks an earlier ignore",
        TEXT,
        [ev("ignored", reason="moved_away", visible_ms=900), ev("accepted", visible_ms=950)],
        DEFAULT,
        Scored("accepted", 0.75, 1.0, 950),
    ),
    (
        "custom config, accepted s = 0.6: 0.6·1 + 0.4·(−1) = 0.2",
        TEXT,
        [ev("accepted"), survival(0.6, 600)],
        RewardConfig(accepted=1.0, rejected=-1.0),
        Scored("accepted", 0.2, 0.6),
    ),
    (
        "custom config, rejected",
        TEXT,
        [ev("rejected", visible_ms=900)],
        RewardConfig(accepted=1.0, rejected=-1.0),
        Scored("rejected", -1.0),
    ),
]


@pytest.mark.parametrize(
    ("text", "events", "rewards", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reward_table(text: str, events: list[wire.Event], rewards: RewardConfig, expected: Scored) -> None:
    scored = score_episode(text, events, rewards, min_visible_ms=250.0)
    assert scored.outcome == expected.outcome
    assert scored.reward == pytest.approx(expected.reward)
    assert scored.similarity == pytest.approx(expected.similarity)
    assert scored.accept_visible_ms == pytest.approx(expected.accept_visible_ms)


def test_min_visible_ms_is_a_parameter() -> None:
    events = [ev("rejected", visible_ms=300)]
    assert score_episode(TEXT, events, DEFAULT, min_visible_ms=250.0).reward == -0.25
    assert score_episode(TEXT, events, DEFAULT, min_visible_ms=500.0).outcome == "unseen"


@pytest.mark.parametrize("s", [0.0, 0.1, 0.25, 0.5, 0.99, 1.0])
def test_acceptance_reward_lies_between_the_penalty_and_the_full_reward(s: float) -> None:
    scored = score_episode(TEXT, [ev("accepted"), survival(s, 30)], DEFAULT, 250.0)
    assert scored.reward is not None
    assert DEFAULT.rejected <= scored.reward <= DEFAULT.accepted
    # Break-even at s = 0.25: showing pays only above a 25% retained fraction (DESIGN.md).
    assert (scored.reward > 0) == (s > 0.25)
