"""What a real backend recorded, read from its SQLite file: the editor tests' view of the events
their keystrokes produced (tests/editors/test_vscode.py; the same query as test_neovim.py's)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _connect(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'flywheel.sqlite3'}?mode=ro", uri=True, timeout=10)


def events(data_dir: Path, completion_id: str) -> list[dict[str, Any]]:
    """The events of one completion, in the client's order."""
    with _connect(data_dir) as db:
        rows = db.execute(
            "SELECT payload FROM events WHERE completion_id = ? ORDER BY client_ts", (completion_id,)
        ).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def completions(data_dir: Path) -> list[tuple[str, str]]:
    """(completion_id, text) of every completion served, oldest first."""
    with _connect(data_dir) as db:
        rows = db.execute("SELECT completion_id, text FROM completions ORDER BY created_at").fetchall()
    return [(cid, text) for cid, text in rows]


def of_kind(found: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in found if e["kind"] == kind]


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_events(
    data_dir: Path, completion_id: str, kinds: list[str], timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Waits until the completion's events include `kinds` (with repeats)."""

    def arrived() -> list[dict[str, Any]] | None:
        found = events(data_dir, completion_id)
        have = [e["kind"] for e in found]
        return found if all(have.count(k) >= kinds.count(k) for k in set(kinds)) else None

    return wait_until(arrived, timeout_s, f"events {kinds} of {completion_id}", step_s=0.2)
