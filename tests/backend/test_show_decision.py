"""backend/show_decision.py's chances, without a model: what each request records as its propensity
when the trigger or the filter explores, and that the engine's early end reads the same draw as the
answer."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from backend.show_decision import showing
from core.confidence import LEADING_TOKENS, confidence
from core.show_policy import FILTER_FEATURES, TRIGGER_FEATURES, Logistic, ShowPolicy, ShowSignals
from core.wire import ServingDecision

YES, NO = Logistic(bias=20.0, weights={}), Logistic(bias=-20.0, weights={})
SURE = [-0.1] * 6


def test_an_explored_call_records_its_call_chance_times_its_show_chance() -> None:
    """A trigger that would skip every call, exploring a fifth: the calls made anyway are shown
    (the filter shows all) with propensity 0.2; the skipped ones record their call chance."""
    policy = ShowPolicy(filter=YES, threshold=0.5, trigger=NO, trigger_threshold=0.5, explore=0.2)
    rng = random.Random(0)
    decided = [showing("x = ", "", "python", ShowSignals(), policy, rng) for _ in range(400)]
    called = [d for d in decided if d.called]
    assert 40 < len(called) < 120
    for d in decided:
        decision = d.decide(SURE) if d.called else d.skipped()
        assert decision.propensity == pytest.approx(0.2)
        assert (decision.called, decision.shown) == (d.called, d.called)
        assert set(decision.features) == set(FILTER_FEATURES if d.called else TRIGGER_FEATURES)


@pytest.mark.parametrize("explore", [0.0, 0.3])
def test_the_engines_early_end_and_the_answer_read_one_draw(explore: float) -> None:
    """Withheld by the filter unless explored: the engine ends exactly the rows the answer
    withholds, once their first LEADING_TOKENS tokens are in, and never a shown one."""
    policy = ShowPolicy(filter=NO, threshold=0.5, explore=explore)
    rng = random.Random(1)
    shown = 0
    for _ in range(200):
        decided = showing("def f():\n    ", "", "python", None, policy, rng)
        decision = decided.decide(SURE)
        shown += decision.shown
        assert not decided.withheld_whatever_follows(SURE[: LEADING_TOKENS - 1])
        assert decided.withheld_whatever_follows(SURE[:LEADING_TOKENS]) == (not decision.shown)
        if decision.shown:
            assert decision.propensity == pytest.approx(explore)
    assert (shown > 0) == (explore > 0)
    # A withheld one records the chance it had: none where nothing explores.
    decisions = [showing("", "", "python", None, policy, rng).decide(SURE) for _ in range(20)]
    withheld = [d.propensity for d in decisions if not d.shown]
    assert withheld and withheld == pytest.approx([explore] * len(withheld))


def test_a_shown_completion_without_a_chance_is_refused_on_the_wire() -> None:
    assert ServingDecision(rule="learned", shown=False, propensity=0.0).propensity == 0.0
    with pytest.raises(ValidationError, match="chance above 0"):
        ServingDecision(rule="learned", shown=True, propensity=0.0)


def test_without_a_policy_the_floor_decides_and_nothing_is_drawn() -> None:
    sure = confidence(SURE)
    below = showing("x = ", "", "python", None, None, floor=sure + 0.1)
    above = showing("x = ", "", "python", None, None, floor=sure - 0.1)
    assert below.policy is None and below.called and below.draw == 0.0
    # The floor's early end: at the LEADING_TOKENS-th token, never before or after.
    assert below.withheld_whatever_follows(SURE[:LEADING_TOKENS])
    assert not below.withheld_whatever_follows(SURE[: LEADING_TOKENS - 1])
    assert not below.withheld_whatever_follows(SURE[: LEADING_TOKENS + 1])
    assert not above.withheld_whatever_follows(SURE[:LEADING_TOKENS])
    withheld, shown = below.decide(SURE), above.decide(SURE)
    assert (withheld.rule, withheld.shown, shown.shown, shown.propensity) == ("floors", False, True, 1.0)
    # No floor where the cursor stands: everything is shown.
    assert showing("x = ", "", "python", None, None).decide(SURE).shown
    assert below.decide([]).features == below.features  # no tokens: the trigger's features
