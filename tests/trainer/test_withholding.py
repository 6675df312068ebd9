"""The learned confidence floors fitted in hindsight: which completions serving stops showing."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_support import build_tokenizer, shown

from core.confidence import AFTER_SYMBOL, IN_WORD, LINE_START, confidence, cursor_place
from core.config import RewardConfig
from trainer.withholding import (
    Evidence,
    FloorHindsight,
    evidence_of,
    extend_evidence,
    fit_min_confidence,
    load_evidence,
    save_evidence,
)

REWARDS = RewardConfig()


def rows(place: str, n: int, confidence: float, taken: bool, start: int = 0) -> list[Evidence]:
    """`n` shown episodes at `place`: taken and kept whole (12 characters), or dismissed."""
    return [
        Evidence(f"{place}{start + i}", place, confidence, 0.75 if taken else -0.25, 12.0 if taken else 0.0)
        for i in range(n)
    ]


def test_confidence_and_where_the_cursor_stands() -> None:
    assert confidence([-1.0, -2.0, -3.0, -9.0]) == pytest.approx(-2.0)
    assert confidence([]) == 0.0
    assert cursor_place("x = 1\n    ") == LINE_START
    assert cursor_place("") == LINE_START
    assert cursor_place("    return self.val") == IN_WORD
    assert cursor_place("    total_2") == IN_WORD
    assert cursor_place("    print(") == AFTER_SYMBOL
    assert cursor_place("    x = ") == AFTER_SYMBOL


def test_evidence_of_episodes_carries_place_confidence_and_characters_kept() -> None:
    tokenizer = build_tokenizer()
    taken = shown(tokenizer, 1, "return self", [-0.3, -0.4], "accepted", 0.75).model_copy(
        update={"place": IN_WORD}
    )
    withheld = taken.model_copy(
        update={"completion_id": "w", "text": "", "completion_ids": [], "token_logprobs": [], "reward": 0.0}
    )
    first, second = evidence_of([taken, withheld], REWARDS)
    assert (first.place, first.confidence, first.kept_chars) == (
        IN_WORD,
        confidence(taken.token_logprobs),
        11.0,
    )
    assert second.confidence is None and second.kept_chars == 0.0


def test_a_floor_rises_a_step_where_unsure_suggestions_were_dismissed() -> None:
    # At line starts, unsure ones were dismissed and sure ones taken; in words everything was taken.
    evidence = (
        rows(LINE_START, 40, -5.5, taken=False)
        + rows(LINE_START, 10, -0.5, taken=True, start=100)
        + rows(IN_WORD, 30, -5.5, taken=True)
    )
    # Not on 80 shown suggestions by default: the floors wait for 800.
    assert fit_min_confidence(evidence, current={}).min_confidence == {}
    # One step a cycle, to the next floor that withholds anything more: -6 would withhold nothing.
    fit = fit_min_confidence(evidence, current={}, min_shown=20)
    assert fit.min_confidence == {LINE_START: -5.0}
    assert fit.chosen.kept_chars == pytest.approx(fit.current.kept_chars)
    assert fit.chosen.reward > fit.current.reward
    assert fit.withheld_share == pytest.approx(40 / 80)
    # Withholding the unsure words would cost what their users kept: that floor does not rise.
    assert IN_WORD not in fit.min_confidence
    # The next cycle, the same evidence: nothing more to withhold at line starts, so it stays.
    assert fit_min_confidence(evidence, current=fit.min_confidence, min_shown=20).min_confidence == {
        LINE_START: -5.0
    }


def test_a_floor_comes_down_where_what_it_withholds_was_taken() -> None:
    # Evidence from before the floor rose: the suggestions it now withholds were mostly taken.
    evidence = rows(AFTER_SYMBOL, 30, -2.7, taken=True) + rows(AFTER_SYMBOL, 10, -2.7, taken=False, start=50)
    assert fit_min_confidence(evidence, current={AFTER_SYMBOL: -2.5}, min_shown=20).min_confidence == {
        AFTER_SYMBOL: -3.0
    }
    # Nothing known below the floor (all withheld since): it stays.
    silent = [Evidence(f"s{i}", AFTER_SYMBOL, None, 0.0, 0.0) for i in range(40)]
    kept = rows(AFTER_SYMBOL, 30, -1.0, taken=True)
    assert fit_min_confidence(silent + kept, current={AFTER_SYMBOL: -2.5}, min_shown=20).min_confidence == {
        AFTER_SYMBOL: -2.5
    }


def test_no_floor_where_the_unsure_suggestions_were_taken_too_often() -> None:
    # A third of the unsure ones were taken and kept: withholding them costs a third of the help.
    evidence = rows(IN_WORD, 20, -5.5, taken=False) + rows(IN_WORD, 10, -5.5, taken=True, start=50)
    assert fit_min_confidence(evidence, current={}, min_shown=20).min_confidence == {}
    # Too few shown episodes to go on: the live version's floors stay.
    assert fit_min_confidence(evidence[:5], current={IN_WORD: -2.0}, min_shown=20).min_confidence == {
        IN_WORD: -2.0
    }


def test_a_step_whose_cost_rests_on_few_episodes_is_not_taken() -> None:
    """Twenty dismissed and one long acceptance below the step: the reward says withhold, but
    losing that acceptance is more than the tolerance of the characters kept."""
    evidence = rows(LINE_START, 20, -6.5, taken=False) + rows(LINE_START, 40, -0.5, taken=True, start=100)
    evidence.append(Evidence("long", LINE_START, -6.5, 0.75, 40.0))
    scored = FloorHindsight(evidence)
    assert scored.estimate({LINE_START: -6.0}).reward > scored.estimate({}).reward
    assert fit_min_confidence(evidence, current={}, min_shown=20).min_confidence == {}


def test_the_evidence_keeps_the_newest_episodes_once_each(tmp_path: Path) -> None:
    old = rows(IN_WORD, 5, -1.0, taken=True)
    new = rows(IN_WORD, 3, -2.0, taken=False, start=3)  # in_word3 and in_word4 seen again
    merged = extend_evidence(old, new, history=6)
    assert [e.completion_id for e in merged] == [
        "in_word0",
        "in_word1",
        "in_word2",
        "in_word3",
        "in_word4",
        "in_word5",
    ]
    assert merged[3].confidence == -2.0
    assert [e.completion_id for e in extend_evidence(old, new, history=2)] == ["in_word4", "in_word5"]
    save_evidence(tmp_path, merged)
    assert load_evidence(tmp_path) == merged
    assert load_evidence(tmp_path / "nowhere") == []
