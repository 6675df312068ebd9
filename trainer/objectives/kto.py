"""KTO (Ethayarajh et al. 2024) through TRL's KTOTrainer: each shown suggestion is desirable or
undesirable by its reward, with no need for pairs. Abstentions and neutral rewards are left out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peft import PeftModel
from trl import KTOConfig, KTOTrainer

from core.wire import Episode
from trainer.corrections import completion_text
from trainer.objectives.trl_common import prompt_text, run_trl


@dataclass
class KTOObjective:
    beta: float = 0.1
    # A reward above `desirable_above` is desirable, below `undesirable_below` undesirable.
    desirable_above: float = 0.0
    undesirable_below: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def kto_rows(tokenizer: Any, episodes: Sequence[Episode], config: KTOObjective) -> list[dict]:
    rows = []
    for episode in episodes:
        completion = completion_text(tokenizer, episode)
        if not completion:
            continue  # an abstention has no text to label
        if episode.reward > config.desirable_above:
            label = True
        elif episode.reward < config.undesirable_below:
            label = False
        else:
            continue
        rows.append({"prompt": prompt_text(tokenizer, episode), "completion": completion, "label": label})
    return rows


def train_kto(
    model: PeftModel,
    tokenizer: Any,
    episodes: Sequence[Episode],
    config: KTOObjective,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
) -> dict[str, float]:
    rows = kto_rows(tokenizer, episodes, config)
    if not rows:
        return {"steps": 0.0, "trained_rows": 0.0}
    metrics = run_trl(
        KTOTrainer,
        KTOConfig,
        model,
        tokenizer,
        rows,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
    )
    metrics["trained_rows"] = float(len(rows))
    return metrics
