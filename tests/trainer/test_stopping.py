"""The learned cut fitted in hindsight, and the correction term, on a real tokenizer and model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_support import build_tokenizer, one_thread, save_tiny_model, shown

from core.config import RewardConfig, TrainerConfig
from trainer.corrections import wanted_ids, wanted_text
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.stopping import HindsightSet, first_below, fit_stop_logprob
from trainer.update import train_on_episodes, wanted_logprobs

REWARDS = RewardConfig()


def test_first_below_finds_the_token_serving_would_cut_before() -> None:
    assert first_below([-0.1, -2.0, -0.1], -1.0) == 1
    assert first_below([-0.1, -0.5], -1.0) is None
    assert first_below([-9.0], None) is None


def test_a_cut_is_learned_where_right_first_words_were_dismissed_for_their_tail() -> None:
    tokenizer = build_tokenizer()
    # Right first words (sure), then an unsure wrong tail: the users wrote something else there.
    dismissed = [
        shown(tokenizer, i, "return self value", [-0.2, -0.3, -5.0], "rejected", -0.25, "return self.key")
        for i in range(15)
    ]
    # Sure and right all the way: taken as is.
    taken = [shown(tokenizer, 100 + i, "import os", [-0.2, -0.4], "accepted", 0.75) for i in range(10)]
    fit = fit_stop_logprob(tokenizer, dismissed + taken, REWARDS, current=None)
    assert fit.stop_logprob is not None and -5.0 < fit.stop_logprob <= -0.3
    assert fit.chosen.kept_chars > fit.uncut.kept_chars
    assert fit.chosen.reward > fit.uncut.reward


def test_no_cut_when_the_unsure_tails_were_what_users_kept() -> None:
    tokenizer = build_tokenizer()
    # The same shape of log-probs, but the unsure tail was right: cutting it would lose characters.
    kept = [shown(tokenizer, i, "return self value", [-0.2, -0.3, -5.0], "accepted", 0.75) for i in range(25)]
    assert fit_stop_logprob(tokenizer, kept, REWARDS, current=None).stop_logprob is None
    # Too few shown episodes to go on: the live version's cut stays.
    assert fit_stop_logprob(tokenizer, kept[:5], REWARDS, current=-3.0).stop_logprob == -3.0


def test_no_cut_when_its_gain_in_characters_rests_on_a_few_episodes() -> None:
    """A cut that would rescue four dismissed lines and shorten twenty taken ones keeps a little
    more in the mean, and much more reward, but the characters are not surely kept: no cut."""
    tokenizer = build_tokenizer()
    rescued = [
        shown(tokenizer, i, "return self value", [-0.2, -0.3, -5.0], "rejected", -0.25, "return self.key")
        for i in range(4)
    ]
    shortened = [
        shown(tokenizer, 100 + i, "return self x", [-0.2, -0.3, -5.0], "accepted", 0.75) for i in range(20)
    ]
    episodes = rescued + shortened
    scored = HindsightSet(tokenizer, episodes, REWARDS)
    assert scored.estimate(-3.0).kept_chars > scored.estimate(None).kept_chars
    assert scored.estimate(-3.0).reward > scored.estimate(None).reward
    assert scored.kept_chars_bound(-3.0, None) < 0
    assert fit_stop_logprob(tokenizer, episodes, REWARDS, current=None).stop_logprob is None
    # Forty rescued lines instead of four: the gain is sure, and the cut is learned.
    many = [e.model_copy(update={"completion_id": f"r{n}"}) for n in range(10) for e in rescued]
    surer = HindsightSet(tokenizer, many + shortened, REWARDS)
    assert surer.kept_chars_bound(-3.0, None) > scored.kept_chars_bound(-3.0, None)
    assert fit_stop_logprob(tokenizer, many + shortened, REWARDS, current=None).stop_logprob is not None


def test_hindsight_scores_a_cut_to_nothing_as_an_abstention() -> None:
    tokenizer = build_tokenizer()
    unsure = shown(tokenizer, 1, "frobnicate it", [-6.0, -6.0], "rejected", -0.25, "pass")
    silent = unsure.model_copy(update={"seq": 2, "text": "", "outcome": "abstained", "reward": 0.0})
    scored = HindsightSet(tokenizer, [unsure, silent], REWARDS)
    assert scored.estimate(None).reward == pytest.approx(-0.125)
    assert scored.estimate(-3.0).reward == pytest.approx(0.0)
    assert scored.estimate(-3.0).kept_chars == 0.0


def test_wanted_text_is_the_healed_head_then_what_the_user_wrote() -> None:
    tokenizer = build_tokenizer()
    # The prompt stopped before "im"; the completion rewrote it, and "port" was shown.
    episode = shown(tokenizer, 1, "port os", [-1.0, -1.0], "rejected", -0.25, "port sys")
    episode = episode.model_copy(
        update={"completion_ids": tokenizer.encode("import os", add_special_tokens=False)}
    )
    assert wanted_text("import os", episode) == "import sys"
    assert tokenizer.decode(wanted_ids(tokenizer, episode, 64)) == "import sys"
    assert wanted_text("import os", episode.model_copy(update={"rewrite": None})) is None
    # The user wrote what was shown: nothing to correct.
    assert wanted_text("import os", episode.model_copy(update={"rewrite": "port os"})) is None


@pytest.mark.usefixtures(one_thread.__name__)
def test_the_correction_term_teaches_what_users_wrote_instead(tmp_path: Path) -> None:
    _, tokenizer = save_tiny_model(tmp_path / "base")
    policy = load_policy(str(tmp_path / "base"), None, TrainerConfig(), torch.device("cpu"))
    episodes = [
        shown(tokenizer, i, "return self value", [-3.0, -3.0, -3.0], "rejected", -0.25, "return x + y")
        for i in range(8)
    ]
    wanted = [wanted_ids(tokenizer, e, 64) for e in episodes]

    def wanted_logp() -> float:
        with torch.no_grad():
            logps, mask = wanted_logprobs(policy, episodes, wanted, range(len(episodes)), torch.device("cpu"))
        return float((logps * mask).sum())

    before = wanted_logp()
    config = PGConfig(correction_coef=1.0, kl_sample=1.0)
    metrics = train_on_episodes(
        policy, episodes, config, learning_rate=1e-2, batch_size=8, epochs=5, wanted=wanted
    )
    assert metrics["corrections"] == 8 and metrics["correction_nll"] > 0
    assert wanted_logp() > before + 1.0
    # One list of wanted tokens per episode, or none at all.
    with pytest.raises(ValueError, match="differ in length"):
        train_on_episodes(policy, episodes, config, learning_rate=1e-2, batch_size=8, epochs=1, wanted=[])


def test_what_users_wrote_mid_line_ends_with_the_newline_that_stops_it() -> None:
    tokenizer = build_tokenizer()
    newline = tokenizer.encode("\n", add_special_tokens=False)
    rejected = shown(tokenizer, 1, "os", [-1.0], "rejected", -0.25, "sys")
    in_word = rejected.model_copy(update={"place": "in_word"})
    assert tokenizer.decode(wanted_ids(tokenizer, in_word, 64)) == "sys\n"
    assert wanted_ids(tokenizer, in_word, 64)[-len(newline) :] == newline
    # At a line's start the user's text is a block whose end the newline does not mark.
    at_line_start = rejected.model_copy(update={"place": "line_start"})
    assert tokenizer.decode(wanted_ids(tokenizer, at_line_start, 64)) == "sys"
    # Place unknown (episodes stored before places were): nothing is assumed.
    assert tokenizer.decode(wanted_ids(tokenizer, rejected, 64)) == "sys"
    # An acceptance the user edited ran to the line's end only if the suggestion did.
    edited = shown(tokenizer, 2, "os", [-1.0], "accepted", 0.4, "sys").model_copy(
        update={"place": "after_symbol"}
    )
    assert tokenizer.decode(wanted_ids(tokenizer, edited, 64)) == "sys"
    to_line_end = edited.model_copy(
        update={"completion_ids": tokenizer.encode("os\n", add_special_tokens=False)}
    )
    assert tokenizer.decode(wanted_ids(tokenizer, to_line_end, 64)) == "sys\n"
    # The token cap may leave no room for it.
    assert tokenizer.decode(wanted_ids(tokenizer, in_word, 1)) != "sys\n"
