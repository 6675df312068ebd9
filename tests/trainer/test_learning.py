"""Learning over several cycles on the real code path: the policy samples as the backend serves
(trainer_support.sample), simulated users reward what it showed, the guards select, and the PG
update trains the LoRA adapter with its optimizer kept between cycles, as trainer/cycle.py does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from trainer_support import build_tokenizer, episode, one_thread, prompts, sample, save_tiny_model
from transformers import AutoTokenizer

from core.config import GuardConfig, TrainerConfig
from core.wire import Episode
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.selection import select_episodes
from trainer.update import make_optimizer, train_on_episodes

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def run_cycles(
    model_dir: Path,
    prompt_ids: list[list[int]],
    reward: Callable[[list[int]], float],
    probe: Callable[[torch.nn.Module], float],
    *,
    cycles: int,
    samples: int,
    learning_rate: float,
    eos: int,
) -> list[float]:
    """probe(policy) before and after each cycle of sample → reward → select → update."""
    torch.manual_seed(0)
    policy = load_policy(str(model_dir), None, TrainerConfig(), CPU)
    optimizer = make_optimizer(policy, learning_rate)
    trace = [probe(policy)]
    version = "base"
    for cycle in range(cycles):
        episodes: list[Episode] = []
        for prompt in prompt_ids:
            for completion, logps in sample(policy, prompt, 1.0, eos, max_new_tokens=2, n=samples):
                user = f"user{len(episodes) % 4}"
                r = reward(completion)
                episodes.append(
                    episode(len(episodes), prompt, completion, logps, r, model_version=version, user_id=user)
                )
        selection = select_episodes(episodes, version, GuardConfig())
        assert not selection.dropped
        train_on_episodes(
            policy,
            selection.kept,
            PGConfig(),
            learning_rate=learning_rate,
            batch_size=32,
            epochs=1,
            seed=cycle,
            optimizer=optimizer,
            parent_version=version,
            kl_budget=GuardConfig().kl_budget,
            measure_kl_after=False,
        )
        version = f"v{cycle + 1}"
        trace.append(probe(policy))
    return trace


@torch.no_grad()
def first_token_mass(policy: torch.nn.Module, prompt_ids: list[list[int]], token_ids: list[int]) -> float:
    """Mean probability that the completion's first token is one of `token_ids`."""
    total = 0.0
    for prompt in prompt_ids:
        logits = policy(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        total += float(torch.softmax(logits, dim=-1)[token_ids].sum())
    return total / len(prompt_ids)


def test_users_preferring_single_quotes_teach_the_policy_single_quotes(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    starts_with = {
        quote: [i for i in range(len(tokenizer)) if tokenizer.decode([i]).lstrip().startswith(quote)]
        for quote in ("'", '"')
    }
    assert starts_with["'"] and starts_with['"']
    texts = [
        "name = ",
        "print(",
        "raise ValueError(",
        "parser.add_argument(",
        "return ",
        "x = {",
        "log.info(",
    ]
    prompt_ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]

    def reward(completion: list[int]) -> float:
        # Users accept and keep suggestions that open a single-quoted string, reject the rest.
        return 0.75 if tokenizer.decode(completion).lstrip().startswith("'") else -0.25

    def probe(policy: torch.nn.Module) -> float:
        single = first_token_mass(policy, prompt_ids, starts_with["'"])
        double = first_token_mass(policy, prompt_ids, starts_with['"'])
        return single / double

    single_before = first_token_mass(
        load_policy(str(tiny_model_dir), None, TrainerConfig(), CPU), prompt_ids, starts_with["'"]
    )
    trace = run_cycles(
        tiny_model_dir,
        prompt_ids,
        reward,
        probe,
        cycles=4,
        samples=128,
        learning_rate=3e-2,
        eos=tokenizer.eos_token_id,
    )
    # Single over double quotes, before and after each cycle: the preferred style gains.
    assert trace[-1] > 1.25 * trace[0], trace
    assert trace[2] > trace[0], trace
    assert single_before > 0


def test_when_every_shown_completion_is_rejected_the_policy_learns_to_abstain(tmp_path: Path) -> None:
    # A small untrained Llama: its peaked random distributions abstain now and then, as models do.
    save_tiny_model(tmp_path / "base")
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    prompt_ids = [p[:k] for p in prompts(tokenizer) for k in (3, 6)]

    def reward(completion: list[int]) -> float:
        # DESIGN.md's table: silence is worth 0, every suggestion shown is rejected (−0.25).
        return 0.0 if completion[0] == eos else -0.25

    trace = run_cycles(
        tmp_path / "base",
        prompt_ids,
        reward,
        lambda policy: first_token_mass(policy, prompt_ids, [eos]),
        cycles=4,
        samples=32,
        learning_rate=3e-3,
        eos=eos,
    )
    # Abstention probability, before and after each cycle: above where it started after every cycle.
    assert all(after > trace[0] for after in trace[1:]), trace
    assert trace[-1] > 1.3 * trace[0], trace
