"""The TRL objectives (KTO on reward labels, DPO on the users' rewrites) on a tiny real Llama, and
objective configuration from the settings."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from trainer_support import episode, one_thread, save_tiny_model

from core.config import Settings, TrainerConfig
from core.wire import Episode
from trainer.checkpoint import save_adapter_atomic
from trainer.gate import sequence_logps
from trainer.objectives import objective_config
from trainer.objectives.dpo import DPOConfig, dpo_rows, train_dpo
from trainer.objectives.kto import KTOConfig, kto_rows, train_kto
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
PROMPT = "import os\nprint(os.path.join("


@pytest.fixture
def policy_and_tokenizer(tmp_path: Path):
    _, tokenizer = save_tiny_model(tmp_path / "base")
    torch.manual_seed(0)
    return load_policy(str(tmp_path / "base"), None, TrainerConfig(), CPU), tokenizer


def completion(tokenizer, prompt_ids: list[int], text: str, seq: int, reward: float, **fields) -> Episode:
    ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
    return episode(seq, prompt_ids, ids, [-1.0] * len(ids), reward).model_copy(
        update={"text": text, **fields}
    )


def margin(policy, good: Episode, bad: Episode) -> float:
    logps = sequence_logps(policy, [good, bad])
    return float(logps[0] - logps[1])


def test_kto_learns_desirable_over_undesirable(
    policy_and_tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy, tokenizer = policy_and_tokenizer
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)
    good = completion(tokenizer, prompt, "'a', 'b')", 1, 0.75)
    bad = completion(tokenizer, prompt, '"a", "b")', 2, -0.25)
    silent = episode(3, prompt, [tokenizer.eos_token_id], [-1.0], 0.0)
    episodes = [good, bad] * 8 + [silent]
    rows = kto_rows(tokenizer, episodes, KTOConfig())
    assert len(rows) == 16 and sum(r["label"] for r in rows) == 8  # the abstention has no text to label
    assert rows[0]["prompt"] == PROMPT and rows[0]["completion"] == "'a', 'b')"
    before = margin(policy, good, bad)
    with caplog.at_level(logging.INFO, "flywheel.progress"):
        metrics = train_kto(
            policy, tokenizer, episodes, KTOConfig(), learning_rate=1e-2, batch_size=8, epochs=3
        )
    assert metrics["trained_rows"] == 16
    # TRL's steps advanced the trainer's progress (trainer/progress.py; plain lines off a terminal).
    assert re.search(r"update on 16 rows: ([1-9]\d*)/\1 steps \(100%\)", caplog.text), caplog.text
    assert margin(policy, good, bad) > before + 0.5
    # TRL's reference copy of the adapter is gone: what is saved is the trained adapter alone.
    assert list(policy.peft_config) == ["default"]
    saved = save_adapter_atomic(policy, tmp_path / "out")
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_dpo_learns_the_users_rewrite_over_the_suggestion(policy_and_tokenizer) -> None:
    policy, tokenizer = policy_and_tokenizer
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)
    rejected = completion(tokenizer, prompt, '"a", "b")', 1, -0.25, outcome="rejected", rewrite="'a', 'b')")
    unchanged = completion(tokenizer, prompt, "'a')", 2, 0.75, rewrite="'a')")
    no_rewrite = completion(tokenizer, prompt, "x)", 3, -0.25)
    episodes = [rejected] * 8 + [unchanged, no_rewrite]
    rows = dpo_rows(tokenizer, episodes)
    assert len(rows) == 8 and rows[0] == {"prompt": PROMPT, "chosen": "'a', 'b')", "rejected": '"a", "b")'}
    # At a blank line the prompt stops before the typed indentation, which the completion writes:
    # the user's text gets it back, so that both sides continue the same prompt.
    healed = completion(tokenizer, prompt, "    return a", 4, -0.25, outcome="rejected", rewrite="return b")
    healed = healed.model_copy(update={"text": "return a"})
    assert dpo_rows(tokenizer, [healed])[0]["chosen"] == "    return b"
    chosen = completion(tokenizer, prompt, "'a', 'b')", 9, 0.0)
    before = margin(policy, chosen, rejected)
    metrics = train_dpo(
        policy, tokenizer, episodes, DPOConfig(), learning_rate=1e-2, batch_size=4, epochs=3
    )
    assert metrics["trained_rows"] == 8
    assert margin(policy, chosen, rejected) > before + 0.5
    assert list(policy.peft_config) == ["default"]


def test_objective_config_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("FLYWHEEL_TRAINER__PG__KL_COEF", "0.2")
    monkeypatch.setenv("FLYWHEEL_TRAINER__GUARDS__MIN_USERS", "3")
    settings = Settings()
    assert objective_config(settings.trainer) == PGConfig(kl_coef=0.2)
    assert settings.trainer.guards.min_users == 3
    assert objective_config(TrainerConfig(objective="dpo", dpo={"beta": 0.3})) == DPOConfig(beta=0.3)
    assert objective_config(TrainerConfig(objective="kto")) == KTOConfig()
    with pytest.raises(ValueError, match="unknown trainer objective"):
        objective_config(TrainerConfig(objective="ppo"))
    with pytest.raises(TypeError):
        objective_config(TrainerConfig(pg={"kl_coeff": 0.1}))
