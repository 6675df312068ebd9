"""The eval gate on a real small model: off-policy reward estimate, held-out perplexity, degenerate
outputs; a candidate that fails any of them is rejected with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_support import episode, one_thread, sample
from transformers import AutoTokenizer

from core.config import GateConfig, TrainerConfig
from core.wire import Episode
from trainer.corpus import is_held_out, stdlib_dir
from trainer.gate import (
    DEGENERATE_CODE_PROMPTS,
    DEGENERATE_PROMPT_CHARS,
    DEGENERATE_PROMPTS,
    GateBaseline,
    WindowLosses,
    degenerate_failures,
    degenerate_prompts,
    evaluate_candidate,
    heldout_code,
    heldout_code_parts,
    is_loop,
    measure_base,
    measure_parent,
    perplexity_verdict,
    sequence_logps,
    snis,
    split_heldout,
)
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.update import train_on_episodes

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
GATE = GateConfig(ppl_chars=6000, min_ess=4.0)


def test_snis_on_policy_is_the_mean_reward_and_follows_the_target() -> None:
    episodes = [episode(i, [1], [2], [-1.0], r) for i, r in enumerate([1.0, 0.0, 0.0, -1.0])]
    behaviour = torch.tensor([-1.0] * 4)
    value, ess = snis(behaviour, episodes)
    assert value == pytest.approx(0.0) and ess == pytest.approx(4.0)
    # A target twice as likely to produce the rewarded completion, half as likely the punished one.
    value, ess = snis(behaviour + torch.log(torch.tensor([2.0, 1.0, 1.0, 0.5])), episodes)
    assert value == pytest.approx((2.0 - 0.5) / 4.5) and ess < 4.0


def test_heldout_split_is_deterministic() -> None:
    episodes = [episode(i, [1], [2], [-1.0], 0.0) for i in range(400)]
    train, heldout = split_heldout(episodes, 0.2)
    assert len(train) + len(heldout) == 400 and 50 < len(heldout) < 110
    assert split_heldout(list(reversed(episodes)), 0.2)[1] == list(reversed(heldout))


def test_repetition_loops_are_recognised() -> None:
    assert is_loop([5, 6, 7, 7, 7, 7])
    assert is_loop([1, 2, 3, 4, 3, 4, 3, 4, 3, 4])
    assert not is_loop([1, 2, 3, 4, 5, 6, 7, 8])
    assert not is_loop([])


def test_degenerate_output_fails_beyond_the_bases_loops_and_when_all_empty() -> None:
    config = GateConfig(max_extra_loop_share=0.1)
    base = {"empty": 0, "loops": 4, "prompts": 32}
    # 10% of 32 prompts: three more loops than the base pass, four fail.
    assert degenerate_failures({"empty": 0, "loops": 7, "prompts": 32}, base, config) == []
    [loops] = degenerate_failures({"empty": 0, "loops": 8, "prompts": 32}, base, config)
    assert "repetition loops on 8 of 32" in loops and "base: 4" in loops
    assert degenerate_failures(
        {"empty": 0, "loops": 5, "prompts": 32}, base, GateConfig(max_extra_loop_share=0)
    )
    [empty] = degenerate_failures({"empty": 32, "loops": 0, "prompts": 32}, base, config)
    assert "empty" in empty
    assert degenerate_failures({"empty": 32, "loops": 0, "prompts": 32}, {**base, "empty": 32}, config) == []


def test_the_loop_check_also_reads_prompts_cut_from_the_held_out_code() -> None:
    prompts = degenerate_prompts(GateConfig())
    assert prompts[:8] == DEGENERATE_PROMPTS and len(prompts) == 8 + DEGENERATE_CODE_PROMPTS
    code = heldout_code(GateConfig().ppl_chars)
    for prompt in prompts[8:]:
        # Ordinary code up to the first character of a line: where an editor asks at a line start.
        assert prompt in code and len(prompt) == DEGENERATE_PROMPT_CHARS
        assert not prompt.rsplit("\n", 1)[-1].strip()


def test_heldout_code_is_fixed_local_text() -> None:
    text = heldout_code(5000)
    assert 5000 <= len(text) < 5200  # 5000 characters of files, joined by blank lines
    assert heldout_code(5000) is text  # the same text each cycle
    parts = heldout_code_parts(5000)
    assert text == "\n\n".join(part for _, part in parts) and sum(len(part) for _, part in parts) == 5000
    # The starts of standard-library files the bootstrap held out (never trained on), in key order.
    keys = [key for key, _ in parts]
    assert keys == sorted(keys) and all(is_held_out(key) for key in keys)
    for key, part in parts:
        assert (stdlib_dir() / key.removeprefix("stdlib/")).read_text().replace("\r\n", "\n").startswith(part)


@pytest.fixture(scope="module")
def heldout_episodes(tiny_model_dir: Path) -> list[Episode]:
    """Episodes the base model served, rewarded for starting with an even token id."""
    policy = load_policy(str(tiny_model_dir), None, TrainerConfig(), CPU)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    episodes = []
    for prefix in ("import os\n", "def main(", "for item in ", "class Parser:\n    def "):
        prompt = tokenizer.encode(prefix, add_special_tokens=False)
        for completion, logps in sample(policy, prompt, 1.0, tokenizer.eos_token_id, max_new_tokens=3, n=12):
            reward = 0.75 if completion[0] % 2 == 0 else -0.25
            episodes.append(episode(len(episodes), prompt, completion, logps, reward))
    return episodes


def gate(model_dir: Path, change, heldout: list[Episode]):
    policy = load_policy(str(model_dir), None, TrainerConfig(), CPU)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    baseline = GateBaseline(
        sequence_logps(policy, heldout),
        *measure_base(policy, tokenizer, GATE),
        parent_windows=measure_parent(policy, tokenizer, GATE),
    )
    change(policy)
    return evaluate_candidate(policy, tokenizer, heldout, baseline, GATE)


def test_an_unchanged_candidate_passes(tiny_model_dir: Path, heldout_episodes: list[Episode]) -> None:
    result = gate(tiny_model_dir, lambda policy: None, heldout_episodes)
    assert result.passed, result.reason
    assert result.figures["ppl_rise"] == pytest.approx(0.0, abs=1e-6)
    assert result.figures["ppl_rise_parent"] == pytest.approx(0.0, abs=1e-6)
    assert result.figures["ppl_parent"] == pytest.approx(result.figures["ppl_candidate"])
    assert result.figures["reward_candidate"] == pytest.approx(result.figures["reward_live"])


def test_a_candidate_that_raises_heldout_perplexity_is_rejected(
    tiny_model_dir: Path, heldout_episodes: list[Episode]
) -> None:
    def scramble(policy) -> None:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.3)

    result = gate(tiny_model_dir, scramble, heldout_episodes)
    assert not result.passed
    assert "over the base's" in result.reason and "over the parent's" in result.reason
    assert result.figures["ppl_rise"] > GATE.max_ppl_increase
    assert result.figures["ppl_rise_parent_lower"] > GATE.max_ppl_increase_over_parent


WINDOWS, TOKENS = 14, 256


def windows_at(nll: np.ndarray) -> WindowLosses:
    """Windows of TOKENS tokens with these mean losses."""
    return WindowLosses(tuple(float(x) * TOKENS for x in nll), (TOKENS,) * len(nll))


def test_the_perplexity_criterion_refuses_regressions_not_noise_nor_accumulated_drift() -> None:
    """Synthetic per-window losses: the parent sits near the old 3% limit over the base."""
    rng = np.random.default_rng(0)
    parent_nll = rng.normal(2.0, 0.3, WINDOWS)
    parent = windows_at(parent_nll)

    def base_at(rise: float) -> float:
        """The base's perplexity for the parent to be `rise` over it."""
        return parent.ppl / (1 + rise)

    def verdict(shift: float, noise: float, parent_rise: float):
        # Noise with no mean of its own: the shift is the candidate's change.
        draw = rng.normal(0.0, noise, WINDOWS)
        candidate = parent_nll + shift + draw - draw.mean()
        return perplexity_verdict(windows_at(candidate), parent, base_at(parent_rise), GATE)

    # Noise: +0.1% over a parent that is +3.0% over the base, 3.1% in all. The old rule (a fixed 3%
    # to the base) refused it and every update after it; now it passes.
    noise = verdict(0.001, 0.01, 0.030)
    assert noise.rise_over_base > 0.03
    assert not noise.failures, noise.failures
    # A real regression, well inside the outer limit: +3% over its parent on every window.
    regression = verdict(0.03, 0.01, 0.005)
    assert regression.rise_over_base < GATE.max_ppl_increase
    assert regression.rise_over_parent_lower > GATE.max_ppl_increase_over_parent
    assert len(regression.failures) == 1 and "over the parent's" in regression.failures[0]
    # An uncertain rise (its mean over the limit, its bound under it) is not refused.
    uncertain = verdict(0.008, 0.1, 0.0)
    assert uncertain.rise_over_parent > GATE.max_ppl_increase_over_parent
    assert not uncertain.failures
    # The outer limit holds whatever the parent did.
    outer = verdict(0.004, 0.001, 0.048)
    assert len(outer.failures) == 1 and "over the base's" in outer.failures[0]
    # A candidate that brings drift back down passes, however close to the limit its parent was.
    down = verdict(-0.01, 0.01, 0.049)
    assert down.rise_over_parent < 0 and not down.failures
    # Without the parent's windows only the outer limit applies.
    alone = perplexity_verdict(windows_at(parent_nll + 0.03), None, base_at(0.005), GATE)
    assert alone.rise_over_parent is None and not alone.failures


def test_a_candidate_worse_on_heldout_rewards_is_rejected(
    tiny_model_dir: Path, heldout_episodes: list[Episode]
) -> None:
    def learn_the_opposite(policy) -> None:
        inverted = [e.model_copy(update={"reward": -e.reward}) for e in heldout_episodes]
        train_on_episodes(
            policy, inverted, PGConfig(kl_coef=0.0), learning_rate=3e-3, batch_size=8, epochs=2, seed=0
        )

    result = gate(tiny_model_dir, learn_the_opposite, heldout_episodes)
    assert result.figures["reward_candidate"] < result.figures["reward_live"] - GATE.reward_margin
    assert not result.passed and "estimated reward" in result.reason
