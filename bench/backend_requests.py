"""What `flywheel bench backend` sends: the prompts of its completion requests, and the outcome
events of completions' lives in the language server's batches of 100.

The fault runs and the tests send the same (bench/faults/ingest_kills.py, tests/backend/backend_traffic.py).
"""

from __future__ import annotations

import time

from uuid6 import uuid7

PREFIXES = [
    "import os\n\ndef main():\n    path = os.",
    "def add(a, b):\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    "for i in range(",
    "import json\n\ndata = json.loads(text)\nfor key in data:\n    ",
    "def read(path):\n    with open(path) as handle:\n        return handle.",
]


def completion_life(completion_id: str) -> list[dict[str, object]]:
    """The events the language server reports for an accepted completion that survives."""
    now = time.time()
    events: list[dict[str, object]] = [
        {"kind": "shown"},
        {"kind": "accepted", "visible_ms": 800.0},
        *(
            {"kind": "survival", "delay_s": delay, "similarity": 0.8, "retained_chars": 12.0}
            for delay in (30, 120, 600)
        ),
    ]
    events[-1]["final"] = True
    # Ids as the language server makes them: time-ordered, so SQLite appends to its indexes.
    return [{"event_id": uuid7().hex, "completion_id": completion_id, "client_ts": now, **e} for e in events]


def event_batches(completion_ids: list[str], batches: int) -> list[list[dict[str, object]]]:
    """Batches of 100 events: the lives of 20 completions each."""
    return [
        [
            event
            for c in range(20)
            for event in completion_life(completion_ids[(b * 20 + c) % len(completion_ids)])
        ]
        for b in range(batches)
    ]
