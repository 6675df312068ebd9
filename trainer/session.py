"""The policy a trainer keeps in memory between cycles, so a cycle that continues the version it
just produced (or the same live version) loads nothing from disk."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer

from core.config import GateConfig, TrainerConfig
from trainer.checkpoint import OPTIMIZER_FILE
from trainer.gate import measure_base
from trainer.policy import load_policy, resolve_device
from trainer.update import make_optimizer

log = logging.getLogger(__name__)

# Adapter weights by parameter name, and the optimizer's state dict.
Snapshot = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class LoadedPolicy:
    base_model: str
    # The backend version these weights are; None once they were trained into a rejected candidate.
    version: str | None
    model: PeftModel
    tokenizer: Any
    optimizer: torch.optim.Optimizer

    def snapshot(self) -> Snapshot:
        """A copy of the trainable (adapter) weights and of the optimizer's state."""
        weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return weights, copy.deepcopy(self.optimizer.state_dict())

    def restore(self, saved: Snapshot) -> None:
        weights, optimizer = saved
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if name in weights:
                    parameter.copy_(weights[name])
        self.optimizer.load_state_dict(optimizer)


@dataclass
class PolicyCache:
    config: TrainerConfig
    current: LoadedPolicy | None = None
    # Base model → (held-out perplexity, degenerate counts) with the adapter off.
    _base_figures: dict[str, tuple[float, dict]] = field(default_factory=dict)

    def get(self, base_model: str, version: str, adapter: Path | None) -> LoadedPolicy:
        current = self.current
        if current is not None and current.base_model == base_model and current.version == version:
            return current
        self.current = None  # free the old weights before loading the new ones
        model = load_policy(base_model, adapter, self.config, resolve_device(self.config.device))
        optimizer = make_optimizer(model, self.config.learning_rate)
        if adapter is not None and (adapter / OPTIMIZER_FILE).is_file():
            device = next(model.parameters()).device
            optimizer.load_state_dict(torch.load(adapter / OPTIMIZER_FILE, map_location=device))
            log.info("optimizer state of %s restored", version)
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.current = LoadedPolicy(base_model, version, model, tokenizer, optimizer)
        return self.current

    def base_figures(self, policy: LoadedPolicy, config: GateConfig) -> tuple[float, dict]:
        if policy.base_model not in self._base_figures:
            self._base_figures[policy.base_model] = measure_base(policy.model, policy.tokenizer, config)
        return self._base_figures[policy.base_model]

    def became(self, version: str | None) -> None:
        """The in-memory weights are now this version (None: no version the backend serves)."""
        if self.current is not None:
            self.current.version = version
