"""The trainer's persistent state: how far into the episode stream it has trained."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.atomic import write_file_atomic

STATE_FILE = "state.json"


@dataclass
class TrainerState:
    # Episodes with seq ≤ cursor have been trained on (or deliberately skipped).
    cursor: int = 0
    # The last checkpoint version this trainer uploaded.
    last_version: str | None = None
    updated_at: float = 0.0
    # A saved candidate being uploaded, and the cursor that upload completes: a trainer killed
    # mid-upload finds out from the backend whether it arrived, and uploads it again if not.
    pending_candidate: str | None = None
    pending_cursor: int = 0


def load_state(trainer_dir: Path) -> TrainerState:
    path = trainer_dir / STATE_FILE
    if not path.exists():
        return TrainerState()
    data = json.loads(path.read_text())
    return TrainerState(
        cursor=int(data.get("cursor", 0)),
        last_version=data.get("last_version"),
        updated_at=float(data.get("updated_at", 0.0)),
        pending_candidate=data.get("pending_candidate"),
        pending_cursor=int(data.get("pending_cursor", 0)),
    )


def save_state(trainer_dir: Path, state: TrainerState) -> None:
    state.updated_at = time.time()
    write_file_atomic(trainer_dir / STATE_FILE, json.dumps(asdict(state), indent=2).encode())
