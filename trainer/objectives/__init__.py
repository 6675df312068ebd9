"""Training objectives: each is a small config dataclass beside its loss.

pg (the default) is ours, in trainer/objectives/pg.py; kto and dpo run TRL's trainers and are
imported from their modules only when chosen, TRL being heavy to import.
"""

from trainer.objectives.pg import PGConfig, compute_advantages, pg_loss

__all__ = ["PGConfig", "compute_advantages", "pg_loss"]
