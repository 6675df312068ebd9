"""The gate's held-out episodes, trained on in the next cycle once its reward check has used them.

A cycle holds out a share of its episodes (`gate.heldout_share`, by a hash of the completion id)
for the gate's off-policy reward estimate. Held out for good they were a fifth of every cycle's
signal that no update ever learned from; the check needs them only while it judges that cycle's
candidate, and the next cycle's check gets fresh ones of its own. So each cycle saves its held-out
episodes, keyed by the cursor its upload moves to, and the next cycle (which starts at that cursor)
trains on them beside its own. Keyed by the cursor so that a retried cycle (killed before its upload
was taken) trains on them again, nothing having been made of them, while one that follows a
finished upload never sees an older set: no episode goes into one lineage twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from core.atomic import write_file_atomic
from core.wire import Episode

CARRY_PREFIX = "heldout_carry-"


def carry_path(trainer_dir: Path, cursor: int) -> Path:
    return trainer_dir / f"{CARRY_PREFIX}{cursor}.json"


def save_carry(trainer_dir: Path, cursor: int, episodes: Sequence[Episode], keep: int) -> None:
    """The held-out episodes for the cycle that starts at `cursor`. The set for `keep` (the cursor
    this cycle started at) stays until the cursor has moved past it: a cycle killed before its
    upload is retried from there and trains on it again."""
    body = {"cursor": cursor, "episodes": [e.model_dump(mode="json") for e in episodes]}
    write_file_atomic(carry_path(trainer_dir, cursor), json.dumps(body).encode())
    for old in trainer_dir.glob(f"{CARRY_PREFIX}*.json"):
        if old not in (carry_path(trainer_dir, cursor), carry_path(trainer_dir, keep)):
            old.unlink(missing_ok=True)


def load_carry(trainer_dir: Path, cursor: int) -> list[Episode]:
    """The episodes saved for a cycle starting at `cursor`; [] when there are none."""
    path = carry_path(trainer_dir, cursor)
    if not path.is_file():
        return []
    return [Episode.model_validate(e) for e in json.loads(path.read_text()).get("episodes", [])]
