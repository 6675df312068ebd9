"""The guards: which episodes an update may learn from, and how far one update may move the policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_support import build_tokenizer, episode, one_thread, prompts, sample, save_tiny_model

from core.config import GuardConfig, TrainerConfig
from core.wire import Episode, ServingDecision
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.selection import select_episodes
from trainer.update import kl_to_base, train_on_episodes

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def ep(seq: int, user: str = "u1", version: str = "base", reward: float = 0.75, **fields) -> Episode:
    e = episode(seq, [1, 2, 3], [4, 5], [-1.0, -1.0], reward, model_version=version, user_id=user)
    return e.model_copy(update={"text": "x = 1", **fields})


def test_stale_versions_are_dropped_against_the_live_one() -> None:
    episodes = [ep(1, version="base"), ep(2, version="v2"), ep(3, version="v4"), ep(4, version="v5")]
    selection = select_episodes(episodes, "v5", GuardConfig(max_version_lag=2))
    assert [e.seq for e in selection.kept] == [3, 4]
    assert selection.dropped == {"stale": 2}
    # A canary newer than live, and names outside the scheme, are kept.
    kept = select_episodes([ep(1, version="v6"), ep(2, version="custom")], "v5", GuardConfig()).kept
    assert len(kept) == 2


def test_what_serving_did_not_show_or_did_not_sample_is_dropped_by_name() -> None:
    skipped = ServingDecision(rule="learned", called=False, shown=False, propensity=0.03)
    withheld = ServingDecision(rule="learned", shown=False, propensity=0.03)
    episodes = [
        ep(1),
        ep(2, prompt_ids=[], completion_ids=[], token_logprobs=[], text="", decision=skipped),
        ep(3, completion_ids=[], token_logprobs=[], text="", decision=withheld),
    ]
    selection = select_episodes(episodes, "base", GuardConfig())
    assert [e.seq for e in selection.kept] == [1]
    assert selection.dropped == {"skipped": 1, "withheld": 1}


def test_acceptance_faster_than_reading_is_dropped() -> None:
    config = GuardConfig(min_accept_ms=150, accept_ms_per_char=5)  # 5 chars: 175 ms to read
    fast = ep(1, accept_visible_ms=100.0)
    slow = ep(2, accept_visible_ms=400.0)
    rejected = ep(3, reward=-0.25, outcome="rejected", accept_visible_ms=None)
    human = [ep(10 + i, accept_visible_ms=900.0) for i in range(4)]
    selection = select_episodes([fast, slow, rejected, *human], "base", config)
    assert fast not in selection.kept and slow in selection.kept and rejected in selection.kept
    assert selection.dropped == {"inhuman_speed": 1}


def test_an_accept_everything_bot_is_filtered_whole() -> None:
    humans = [ep(i, user=f"h{i % 3}", accept_visible_ms=800.0) for i in range(12)]
    # The bot accepts everything within milliseconds; now and then it waits, to look human.
    bot = [ep(100 + i, user="bot", accept_visible_ms=20.0 if i % 5 else 900.0) for i in range(40)]
    selection = select_episodes(humans + bot, "base", GuardConfig(max_user_share=1.0))
    assert all(e.user_id != "bot" for e in selection.kept)
    assert selection.dropped == {"inhuman_user": 40}
    assert len(selection.kept) == 12


def test_accept_then_delete_outliers_are_filtered() -> None:
    config = GuardConfig(delete_min_accepts=8, delete_outlier_margin=0.4, max_user_share=1.0)
    episodes = []
    for user, deleted in (("a", 1), ("b", 2), ("c", 1), ("eraser", 9)):
        for i in range(10):
            # Accepted, then mostly deleted: little survives, so the reward is below zero.
            reward = -0.2 if i < deleted else 0.7
            episodes.append(
                ep(len(episodes) + 1, user=user, reward=reward, outcome="accepted", accept_visible_ms=900.0)
            )
    selection = select_episodes(episodes, "base", config)
    assert {e.user_id for e in selection.kept} == {"a", "b", "c"}
    assert selection.dropped == {"delete_outlier": 10}


def test_each_users_share_and_count_are_capped() -> None:
    episodes = [ep(i, user="flood") for i in range(100)]
    episodes += [ep(200 + i, user=f"u{i % 3}") for i in range(30)]
    selection = select_episodes(episodes, "base", GuardConfig(max_user_share=0.25))
    flood = [e for e in selection.kept if e.user_id == "flood"]
    assert len(flood) / len(selection.kept) <= 0.25
    assert len(flood) == 10  # 0.25 / 0.75 · 30
    assert [e.seq for e in flood] == list(range(90, 100))  # the newest are kept
    assert selection.dropped == {"user_cap": 90}
    # A single-person install: the share cap cannot apply, the count cap does.
    alone = select_episodes(episodes[:100], "base", GuardConfig(max_user_episodes=64))
    assert len(alone.kept) == 64 and alone.dropped == {"user_cap": 36}


def test_an_update_needs_enough_distinct_users() -> None:
    episodes = [ep(i, user=f"u{i % 2}") for i in range(10)]
    selection = select_episodes(episodes, "base", GuardConfig(min_users=3, max_user_share=1.0))
    assert selection.kept == [] and selection.dropped == {"too_few_users": 10}
    assert len(select_episodes(episodes, "base", GuardConfig(min_users=2, max_user_share=1.0)).kept) == 10


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    save_tiny_model(tmp_path / "base")
    return tmp_path / "base"


def test_one_user_flooding_accepts_moves_the_model_no_more_than_the_cap_allows(model_dir: Path) -> None:
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    base = load_policy(str(model_dir), None, TrainerConfig(), CPU)
    torch.manual_seed(0)
    prompt = prompts(tokenizer)[0]
    # The flooder accepts one and the same suggestion over and over.
    [(flooded, flooded_logps)] = sample(base, prompt, 1.0, eos, max_new_tokens=3)
    flood = [episode(i, prompt, flooded, flooded_logps, 0.75, user_id="flood") for i in range(160)]
    others = []
    for u, p in enumerate(prompts(tokenizer)[1:]):
        for completion, logps in sample(base, p, 1.0, eos, max_new_tokens=3, n=8):
            reward = 0.75 if completion[0] % 2 else -0.25
            others.append(episode(1000 + len(others), p, completion, logps, reward, user_id=f"u{u}"))

    def movement(episodes: list[Episode]) -> float:
        """How far the update moves the model: KL(policy ‖ base) on the other users' episodes."""
        torch.manual_seed(0)  # the same fresh LoRA initialization each time
        # A small attention-only adapter: a step that moves it stays in the range where KL
        # grows with the pull (a larger one saturates on this random model and hides the flood).
        small = TrainerConfig(lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"])
        policy = load_policy(str(model_dir), None, small, CPU)
        train_on_episodes(policy, episodes, PGConfig(), learning_rate=5e-3, batch_size=8, epochs=1)
        return kl_to_base(policy, others, batch_size=8)

    config = GuardConfig(max_user_share=0.25)
    kept = select_episodes(flood + others, "base", config).kept
    allowed = int(0.25 / 0.75 * len(others))
    assert sum(e.user_id == "flood" for e in kept) == allowed
    capped = movement(kept)
    # What the cap allows: the flooder counted as `allowed` episodes, no more.
    assert capped == pytest.approx(movement(flood[-allowed:] + others), rel=1e-4)
    # Unguarded, the flood drags the whole model along; capped, it moves about as without it.
    assert movement(flood + others) > 3 * capped
    assert capped < 2 * movement(others)


def test_the_kl_budget_stops_an_update(model_dir: Path) -> None:
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    policy = load_policy(str(model_dir), None, TrainerConfig(), CPU)
    torch.manual_seed(1)
    episodes = []
    for prompt in prompts(tokenizer):
        for completion, logps in sample(policy, prompt, 1.0, eos, max_new_tokens=3, n=8):
            episodes.append(
                episode(len(episodes), prompt, completion, logps, 1.0 if completion[0] % 2 else -1.0)
            )
    free = train_on_episodes(
        load_policy(str(model_dir), None, TrainerConfig(), CPU),
        episodes,
        PGConfig(),
        learning_rate=5e-2,
        batch_size=4,
        epochs=4,
        parent_version="base",
    )
    assert free["kl_stopped"] == 0 and free["steps"] == 32
    budget = free["kl_parent_max"] / 4
    stopped = train_on_episodes(
        policy,
        episodes,
        PGConfig(),
        learning_rate=5e-2,
        batch_size=4,
        epochs=4,
        parent_version="base",
        kl_budget=budget,
    )
    assert stopped["kl_stopped"] == 1 and 0 < stopped["steps"] < 32
