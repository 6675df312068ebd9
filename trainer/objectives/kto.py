"""KTO (Ethayarajh et al. 2024) through TRL's KTOTrainer: each shown suggestion is desirable or
undesirable by its reward, with no need for pairs. Abstentions and neutral rewards are left out.

`KTOConfig` holds our settings (`[trainer.kto]`); `train_kto` turns episodes into TRL's rows and
hands them, with those settings, to TRL's own `trl.KTOConfig` and trainer (trl_common.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trl
from peft import PeftModel

from core.wire import Episode
from trainer.corrections import completion_text
from trainer.objectives.trl_common import prompt_text, run_trl


@dataclass
class KTOConfig:
    # β: how far the policy may move from the reference (the parent version) for a given margin.
    beta: float = 0.1
    # A reward above `desirable_above` is desirable, below `undesirable_below` undesirable; what
    # lies between (a neutral outcome) teaches nothing either way and is left out.
    desirable_above: float = 0.0
    undesirable_below: float = 0.0
    # Weights of the two kinds: KTO's remedy when one kind far outnumbers the other (a weak model's
    # suggestions are mostly rejected).
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def kto_rows(tokenizer: Any, episodes: Sequence[Episode], config: KTOConfig) -> list[dict]:
    """TRL's unpaired rows: prompt, completion, and whether it was desirable."""
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
    config: KTOConfig,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
) -> dict[str, float]:
    """Updates the adapter in place; returns TRL's train figures and the rows trained on."""
    rows = kto_rows(tokenizer, episodes, config)
    if not rows:
        return {"steps": 0.0, "trained_rows": 0.0}
    metrics = run_trl(
        trl.KTOTrainer,
        trl.KTOConfig,
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
    return {**metrics, "trained_rows": float(len(rows))}
