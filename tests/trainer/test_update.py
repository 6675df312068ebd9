"""Log-probs, policy loading and the PG update on a tiny real Llama with a real LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_support import build_tokenizer, episode, one_thread, prompts, sample, save_tiny_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from core.config import TrainerConfig
from core.wire import Episode
from trainer.checkpoint import save_adapter_atomic
from trainer.logprobs import collate, completion_logprobs
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy, resolve_device
from trainer.update import episode_batch, kl_to_base, train_on_episodes

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    save_tiny_model(tmp_path / "base")
    return tmp_path / "base"


def sequence_logps(model: torch.nn.Module, episodes: list[Episode]) -> torch.Tensor:
    with torch.no_grad():
        return completion_logprobs(model, episode_batch(episodes, CPU)).sum(dim=1)


def test_logprobs_match_serving_at_the_recorded_temperature(model_dir: Path) -> None:
    model, tokenizer = save_tiny_model(model_dir.parent / "again")
    eos = tokenizer.eos_token_id
    torch.manual_seed(3)
    rows = []
    # Ragged prompts and completions, so right padding and the gather positions are exercised.
    for i, prompt in enumerate(prompts(tokenizer)):
        [(completion, logps)] = sample(model, prompt[: 5 + 4 * i], 0.7, eos, max_new_tokens=1 + i)
        rows.append((prompt[: 5 + 4 * i], completion, logps))
    batch = collate([r[0] for r in rows], [r[1] for r in rows], [0.7] * len(rows))
    with torch.no_grad():
        ours = completion_logprobs(model, batch)
        hot = completion_logprobs(
            model, collate([r[0] for r in rows], [r[1] for r in rows], [1.0] * len(rows))
        )
    for i, (_, completion, recorded) in enumerate(rows):
        n = len(completion)
        assert ours[i, :n].tolist() == pytest.approx(recorded, abs=1e-5)
        assert torch.all(ours[i, n:] == 0)
        assert (hot[i, :n] - torch.tensor(recorded)).abs().max() > 1e-2


def test_update_prefers_rewarded_sequences_and_moves_away_from_base(model_dir: Path) -> None:
    config = TrainerConfig(lora_r=8, lora_alpha=16)
    policy = load_policy(str(model_dir), None, config, CPU)
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    episodes = []
    for prompt in prompts(tokenizer):
        for completion, logps in sample(policy, prompt, 1.0, eos, max_new_tokens=3, n=8):
            # One kind of sequence (even first token) is rewarded, the other penalized.
            reward = 1.0 if completion[0] % 2 == 0 else -1.0
            episodes.append(episode(len(episodes) + 1, prompt, completion, logps, reward))
    good = [e for e in episodes if e.reward > 0]
    bad = [e for e in episodes if e.reward < 0]
    assert good and bad
    assert kl_to_base(policy, episodes, batch_size=8) == 0.0
    with policy.disable_adapter():
        base_before = sequence_logps(policy, episodes)
    gap_before = sequence_logps(policy, good).mean() - sequence_logps(policy, bad).mean()

    metrics = train_on_episodes(
        policy, episodes, PGConfig(), learning_rate=1e-2, batch_size=8, epochs=3, seed=0
    )

    gap_after = sequence_logps(policy, good).mean() - sequence_logps(policy, bad).mean()
    assert gap_after > gap_before + 1.0
    assert metrics["kl_after"] > 0
    assert kl_to_base(policy, episodes, batch_size=8) == pytest.approx(metrics["kl_after"])
    assert metrics["mean_reward"] == pytest.approx(sum(e.reward for e in episodes) / len(episodes))
    assert metrics["steps"] == 12
    # Only the adapter learned: the base model, adapter off, scores exactly as before.
    with policy.disable_adapter():
        assert torch.allclose(sequence_logps(policy, episodes), base_before)


def test_rewarded_abstention_becomes_more_likely(model_dir: Path) -> None:
    policy = load_policy(str(model_dir), None, TrainerConfig(), CPU)
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    torch.manual_seed(1)
    abstentions, episodes = [], []
    for prompt in prompts(tokenizer):
        with torch.no_grad():
            logp_eos = completion_logprobs(policy, collate([prompt], [[eos]], [1.0]))[0, 0].item()
        abstentions.append(episode(0, prompt, [eos], [logp_eos], reward=0.0))
        for completion, logps in sample(policy, prompt, 1.0, eos, max_new_tokens=2, n=3):
            # DESIGN.md's table: silence is worth 0, a rejected suggestion −0.25.
            episodes.append(episode(0, prompt, completion, logps, reward=-0.25))
    before = sequence_logps(policy, abstentions)
    train_on_episodes(policy, abstentions + episodes, PGConfig(), learning_rate=3e-3, batch_size=4, epochs=2)
    assert torch.all(sequence_logps(policy, abstentions) > before)


def test_saved_adapter_reloads_trainable_and_identical(model_dir: Path, tmp_path: Path) -> None:
    config = TrainerConfig()
    policy = load_policy(str(model_dir), None, config, CPU)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    saved = save_adapter_atomic(policy, tmp_path / "adapters" / "v1")
    again = load_policy(str(model_dir), saved, config, CPU)
    batch = collate([[5, 6, 7], [8, 9]], [[10, 11], [12]], [0.7, 0.7])
    with torch.no_grad():
        assert torch.allclose(completion_logprobs(policy, batch), completion_logprobs(again, batch))
    assert any(p.requires_grad for n, p in again.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in again.named_parameters() if "lora_" not in n)


def test_fresh_lora_adapts_every_linear_layer_or_the_configured_ones(tmp_path: Path) -> None:
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")

    def adapted(trainer_config: TrainerConfig) -> set[str]:
        policy = load_policy(str(tmp_path / "qwen"), None, trainer_config, CPU)
        assert kl_to_base(policy, [episode(1, [1, 2, 3], [4, 5], [-4.0, -4.0], 1.0)], batch_size=1) == 0.0
        return {
            n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in policy.named_parameters() if "lora_A" in n
        }

    # Attention and MLP, not the output head.
    assert adapted(TrainerConfig()) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert adapted(TrainerConfig(lora_target_modules=["q_proj", "v_proj"])) == {"q_proj", "v_proj"}


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
