"""Closing observation windows into scored episodes, and handing them to the trainer in order."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

import aiosqlite

from backend import wire
from backend.confidence import cursor_place
from backend.rewards import Scored, score_episode, user_wrote
from backend.store.database import Database
from flywheel.config import RewardConfig

# Completions scored per transaction: bounds how long one finalize pass holds the write lock.
_FINALIZE_CHUNK = 500
_IN_CHUNK = 500


class EpisodesMixin:
    _db: Database

    async def finalize_due(
        self, now: float, window_s: float, rewards: RewardConfig, min_visible_ms: float
    ) -> int:
        """Score and close every open completion whose window has ended or whose life has ended.

        Due: created_at + window_s ≤ now, or an event with final=True arrived, or an abstention
        (nothing was shown, so there is nothing to observe). Every one gets an episodes row, even
        with a NULL reward, so the finalizer never looks at it again. Returns how many closed.
        """
        total = 0
        while True:
            async with self._db.transaction() as db:
                due = await db.execute_fetchall(
                    "SELECT completion_id, text FROM completions"
                    " WHERE finalized_at IS NULL AND (created_at + ? <= ? OR final_seen = 1 OR text = '')"
                    " ORDER BY created_at, completion_id LIMIT ?",
                    (window_s, now, _FINALIZE_CHUNK),
                )
                if not due:
                    return total
                texts = {row[0]: row[1] for row in due}
                events = await _events_of(db, list(texts))
                scored = [
                    (cid, score_episode(text, events.get(cid, []), rewards, min_visible_ms))
                    for cid, text in texts.items()
                ]
                await db.executemany(
                    "INSERT INTO episodes (completion_id, outcome, reward, similarity, accept_visible_ms,"
                    " finalized_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [(cid, *_columns(s), now) for cid, s in scored],
                )
                await db.executemany(
                    "UPDATE completions SET finalized_at = ? WHERE completion_id = ?",
                    [(now, cid) for cid in texts],
                )
            total += len(due)
            if len(due) < _FINALIZE_CHUNK:
                return total

    async def episodes_after(self, cursor: int, limit: int) -> wire.EpisodesPage:
        """Trainable episodes (non-NULL reward) with seq > cursor, oldest first.

        next_cursor moves past untrainable rows too, so the trainer never rescans them: when the
        page is not full it jumps to the newest seq that existed when the page was read.
        """
        db = self._db.reader
        top_rows = await db.execute_fetchall("SELECT MAX(seq) FROM episodes")
        # Rows at or below `top` are committed and final: one writer hands out seqs in order.
        top = top_rows[0][0] if top_rows and top_rows[0][0] is not None else cursor
        if limit <= 0 or top <= cursor:
            return wire.EpisodesPage(episodes=[], next_cursor=cursor)
        rows = await db.execute_fetchall(
            "SELECT e.seq, e.completion_id, c.user_id, c.model_version, c.prompt_ids, c.completion_ids,"
            " c.token_logprobs, c.temperature, c.text, e.outcome, e.reward, c.created_at,"
            " e.finalized_at, e.accept_visible_ms, json_extract(c.context, '$.prefix')"
            " FROM episodes e JOIN completions c ON c.completion_id = e.completion_id"
            " WHERE e.seq > ? AND e.seq <= ? AND e.reward IS NOT NULL AND c.purged_at IS NULL"
            " ORDER BY e.seq LIMIT ?",
            (cursor, top, limit),
        )
        # What the users wrote instead, for the trainer's corrections and DPO pairs.
        said = await _events_of(
            db, [r[1] for r in rows if r[8]], kinds=(wire.EventKind.REWRITE, wire.EventKind.SURVIVAL)
        )
        episodes = [
            wire.Episode(
                seq=r[0],
                completion_id=r[1],
                user_id=r[2],
                model_version=r[3],
                prompt_ids=json.loads(r[4]),
                completion_ids=json.loads(r[5]),
                token_logprobs=json.loads(r[6]),
                temperature=r[7],
                text=r[8],
                outcome=r[9],
                reward=r[10],
                created_at=r[11],
                finalized_at=r[12],
                accept_visible_ms=r[13],
                rewrite=user_wrote(r[8], said.get(r[1], [])),
                place=cursor_place(r[14]) if r[14] is not None else "",
            )
            for r in rows
        ]
        next_cursor = episodes[-1].seq if len(episodes) == limit else top
        return wire.EpisodesPage(episodes=episodes, next_cursor=next_cursor)

    async def rescore(self, rewards: RewardConfig, min_visible_ms: float) -> int:
        """Score every finalized episode again from its stored events. Returns how many changed.

        A trainer whose cursor is past a re-scored episode does not see it again; re-read from 0.
        """
        changed = 0
        after = 0
        while True:
            async with self._db.transaction() as db:
                rows = await db.execute_fetchall(
                    "SELECT e.seq, e.completion_id, c.text, e.outcome, e.reward, e.similarity,"
                    " e.accept_visible_ms FROM episodes e JOIN completions c"
                    " ON c.completion_id = e.completion_id WHERE e.seq > ? AND c.purged_at IS NULL"
                    " ORDER BY e.seq LIMIT ?",
                    (after, _FINALIZE_CHUNK),
                )
                if not rows:
                    return changed
                events = await _events_of(db, [r[1] for r in rows])
                updates = []
                for seq, cid, text, *old in rows:
                    new = _columns(score_episode(text, events.get(cid, []), rewards, min_visible_ms))
                    if new != tuple(old):
                        updates.append((*new, seq))
                await db.executemany(
                    "UPDATE episodes SET outcome = ?, reward = ?, similarity = ?, accept_visible_ms = ?"
                    " WHERE seq = ?",
                    updates,
                )
            changed += len(updates)
            after = rows[-1][0]


def _columns(scored: Scored) -> tuple[str, float | None, float | None, float | None]:
    return scored.outcome, scored.reward, scored.similarity, scored.accept_visible_ms


async def _events_of(
    db: aiosqlite.Connection, completion_ids: list[str], kinds: Sequence[wire.EventKind] = ()
) -> dict[str, list[wire.Event]]:
    """The stored events of each completion (only those of `kinds`, when given), in client order."""
    events: dict[str, list[wire.Event]] = defaultdict(list)
    only = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else ""
    for start in range(0, len(completion_ids), _IN_CHUNK):
        chunk = completion_ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = await db.execute_fetchall(
            f"SELECT completion_id, payload FROM events WHERE completion_id IN ({marks}){only}"
            " ORDER BY client_ts, rowid",
            [*chunk, *(kind.value for kind in kinds)],
        )
        for cid, payload in rows:
            events[cid].append(wire.Event.model_validate_json(payload))
    return events
