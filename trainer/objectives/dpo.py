"""DPO (Rafailov et al. 2023) through TRL's DPOTrainer, on pairs the users made: what they wrote
at the spot instead (a rewrite after rejecting), or the edited text that survived an acceptance,
is chosen over the suggestion. Episodes without such text are not trained on by this objective.

`DPOConfig` holds our settings (`[trainer.dpo]`); `train_dpo` turns episodes into TRL's pairs and
hands them, with those settings, to TRL's own `trl.DPOConfig` and trainer (trl_common.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trl
from peft import PeftModel

from core.wire import Episode
from trainer.corrections import completion_text, wanted_text
from trainer.objectives.trl_common import prompt_text, run_trl


@dataclass
class DPOConfig:
    # β: how far the policy may move from the reference (the parent version) for a given margin.
    beta: float = 0.1
    # TRL's loss on the preference margin: "sigmoid" is the paper's; TRL has others (ipo, hinge, …).
    loss_type: str = "sigmoid"


def dpo_rows(tokenizer: Any, episodes: Sequence[Episode]) -> list[dict]:
    """TRL's pairs: the user's text chosen over the suggestion, where the user left any."""
    rows = []
    for episode in episodes:
        rejected = completion_text(tokenizer, episode)
        chosen = wanted_text(rejected, episode)
        if chosen is None:
            continue
        rows.append({"prompt": prompt_text(tokenizer, episode), "chosen": chosen, "rejected": rejected})
    return rows


def train_dpo(
    model: PeftModel,
    tokenizer: Any,
    episodes: Sequence[Episode],
    config: DPOConfig,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
) -> dict[str, float]:
    """Updates the adapter in place; returns TRL's train figures and the pairs trained on."""
    rows = dpo_rows(tokenizer, episodes)
    if not rows:
        return {"steps": 0.0, "trained_rows": 0.0}
    metrics = run_trl(
        trl.DPOTrainer,
        trl.DPOConfig,
        model,
        tokenizer,
        rows,
        beta=config.beta,
        loss_type=[config.loss_type],
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
    )
    return {**metrics, "trained_rows": float(len(rows))}
