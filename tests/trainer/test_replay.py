"""The replay term: next-token loss on general code beside the corrections, on a real tiny model."""

from __future__ import annotations

import json.decoder
from pathlib import Path

import pytest
import torch
from trainer_support import CORPUS, one_thread, save_tiny_model, shown

from core.config import TrainerConfig
from trainer.corpus import is_held_out
from trainer.corrections import wanted_ids
from trainer.objectives.pg import PGConfig, correction_loss
from trainer.policy import load_policy
from trainer.replay import WINDOWS_PER_FILE, load_replay, replay_files, replay_loss, replay_terms
from trainer.update import train_on_episodes, wanted_logprobs

WINDOW = 12


def general_code(root: Path, files: int = 12) -> Path:
    """`files` ordinary Python files under `root`, each several windows long."""
    root.mkdir(parents=True)
    for n in range(files):
        (root / f"module_{n}.py").write_text("\n".join(CORPUS[(n + k) % len(CORPUS)] for k in range(8)))
    return root


def held_out_name(root: Path) -> str:
    """A file name the fixed split holds out under `root`."""
    return next(f"held_{n}.py" for n in range(10_000) if is_held_out(f"{root.name}/held_{n}.py"))


def test_replay_reads_only_files_outside_the_held_out_split(tmp_path: Path) -> None:
    root = general_code(tmp_path / "code")
    held = held_out_name(root)
    (root / held).write_text((root / "module_0.py").read_text())
    _, tokenizer = save_tiny_model(tmp_path / "base")

    assert held not in {f.path.name for f in replay_files([str(root)])}
    assert len(replay_files([str(root)])) == 12
    replay = load_replay(tokenizer, [str(root)], WINDOW, max_windows=1000, seed=0)
    # Every window is inputs plus the shifted target, and no file gives more than its share.
    assert {len(w) for w in replay.windows} == {WINDOW + 1}
    assert len(replay.windows) <= 12 * WINDOWS_PER_FILE
    assert len(load_replay(tokenizer, [str(root)], WINDOW, max_windows=5, seed=0).windows) == 5
    sampled = replay.sample(3, torch.Generator().manual_seed(0))
    assert sampled.shape == (3, WINDOW + 1)

    with pytest.raises(FileNotFoundError, match="no directory"):
        replay_files([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="hold no Python files"):
        load_replay(tokenizer, [str(tmp_path / "empty")], WINDOW, 10, 0)


@pytest.mark.usefixtures(one_thread.__name__)
def test_replay_holds_general_code_while_corrections_are_learned(tmp_path: Path) -> None:
    """With the replay term the policy ends lower on general code than imitating corrections alone,
    and it learns the corrections either way."""
    _, tokenizer = save_tiny_model(tmp_path / "base")
    replay = load_replay(tokenizer, [str(general_code(tmp_path / "code"))], WINDOW, 1000, seed=0)
    episodes = [
        shown(tokenizer, i, "return self value", [-3.0, -3.0, -3.0], "rejected", -0.25, "x = x * x * x * x")
        for i in range(8)
    ]
    wanted = [wanted_ids(tokenizer, e, 64) for e in episodes]
    general = torch.tensor(replay.windows)

    @torch.no_grad()
    def losses(policy: torch.nn.Module) -> tuple[float, float]:
        """(loss on general code, loss on the corrections)."""
        logps, mask = wanted_logprobs(policy, episodes, wanted, range(len(episodes)), torch.device("cpu"))
        return float(replay_loss(policy, general)), float(correction_loss(logps, mask))

    def trained(replay_coef: float) -> tuple[float, float]:
        policy = load_policy(str(tmp_path / "base"), None, TrainerConfig(), torch.device("cpu"))
        config = PGConfig(correction_coef=1.0, replay_coef=replay_coef, replay_kl_coef=0.0, replay_windows=8)
        metrics = train_on_episodes(
            policy,
            episodes,
            config,
            learning_rate=1e-2,
            batch_size=8,
            epochs=15,
            wanted=wanted,
            replay=replay,
        )
        assert ("replay_nll" in metrics) == (replay_coef > 0)
        return losses(policy)

    general_before, corrections_before = losses(
        load_policy(str(tmp_path / "base"), None, TrainerConfig(), torch.device("cpu"))
    )
    general_alone, corrections_alone = trained(0.0)
    general_mixed, corrections_mixed = trained(1.0)
    assert general_mixed < min(general_alone, general_before) - 0.5
    assert corrections_alone < corrections_before - 1.0
    assert corrections_mixed < corrections_before - 1.0


@pytest.mark.usefixtures(one_thread.__name__)
def test_the_kl_to_the_base_on_general_code_holds_code_it_never_saw_near_the_base(tmp_path: Path) -> None:
    """With the replay term's KL to the base on, imitating corrections moves the policy less from
    the base on held-out general code than the replay NLL alone does, and the update reports it."""
    _, tokenizer = save_tiny_model(tmp_path / "base")
    replay = load_replay(tokenizer, [str(general_code(tmp_path / "code"))], WINDOW, 1000, seed=0)
    unseen = tokenizer.encode(Path(json.decoder.__file__).read_text()[:4000], add_special_tokens=False)
    heldout = torch.tensor([unseen[s : s + WINDOW + 1] for s in range(0, len(unseen) - WINDOW - 1, WINDOW)])
    episodes = [
        shown(tokenizer, i, "return self value", [-3.0, -3.0, -3.0], "rejected", -0.25, "x = x * x * x * x")
        for i in range(8)
    ]
    wanted = [wanted_ids(tokenizer, e, 64) for e in episodes]

    def trained(replay_kl_coef: float) -> tuple[float, float, dict[str, float]]:
        """(KL to the base on the held-out windows, loss on the corrections, the update's figures)."""
        policy = load_policy(str(tmp_path / "base"), None, TrainerConfig(), torch.device("cpu"))
        config = PGConfig(replay_coef=1.0, replay_kl_coef=replay_kl_coef, replay_windows=8)
        metrics = train_on_episodes(
            policy, episodes, config, learning_rate=1e-2, batch_size=8, epochs=15, wanted=wanted,
            replay=replay,
        )
        with torch.no_grad():
            _, kl = replay_terms(policy, heldout, with_kl=True)
            logps, mask = wanted_logprobs(policy, episodes, wanted, range(len(episodes)), torch.device("cpu"))
        assert kl is not None
        return float(kl), float(correction_loss(logps, mask)), metrics

    kl_off, corrections_off, figures_off = trained(0.0)
    kl_on, corrections_on, figures_on = trained(16.0)
    assert "replay_kl" not in figures_off
    assert figures_on["replay_kl"] > 0.0
    assert kl_on < 0.5 * kl_off, (kl_on, kl_off)
    # The corrections are still learned.
    assert corrections_on < corrections_off + 1.0
