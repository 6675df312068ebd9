"""Training objectives: each is a small config dataclass beside its loss."""

from trainer.objectives.pg import PGConfig, compute_advantages, pg_loss

__all__ = ["PGConfig", "compute_advantages", "pg_loss"]
