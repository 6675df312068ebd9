"""Training objectives: each a config dataclass beside its loss, chosen by `trainer.objective`.

pg (the default) is ours, in trainer/objectives/pg.py (its update loop is trainer/update.py); kto
and dpo run TRL's trainers and are imported from their modules only when chosen, TRL being heavy
to import. `[trainer.<objective>]` overrides fields of the chosen objective's config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from core.config import TrainerConfig
from trainer.objectives.pg import PGConfig, compute_advantages, pg_loss

if TYPE_CHECKING:
    from trainer.objectives.dpo import DPOConfig
    from trainer.objectives.kto import KTOConfig

    ObjectiveConfig = PGConfig | KTOConfig | DPOConfig

__all__ = ["PGConfig", "compute_advantages", "objective_config", "pg_loss"]


def objective_config(cfg: TrainerConfig) -> ObjectiveConfig:
    """The configured objective's dataclass with the configured overrides; ValueError if unknown."""
    if cfg.objective == "pg":
        return _with_overrides(PGConfig, cfg.pg)
    if cfg.objective == "kto":
        from trainer.objectives.kto import KTOConfig

        return _with_overrides(KTOConfig, cfg.kto)
    if cfg.objective == "dpo":
        from trainer.objectives.dpo import DPOConfig

        return _with_overrides(DPOConfig, cfg.dpo)
    raise ValueError(f"unknown trainer objective {cfg.objective!r} (pg, kto, dpo)")


def _with_overrides(cls: type, overrides: dict[str, Any]) -> Any:
    """cls() with `overrides`, each converted to its field's type (environment values are strings)."""
    defaults = cls()
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    return dataclasses.replace(
        defaults, **{name: type(getattr(defaults, name))(value) for name, value in overrides.items()}
    )
