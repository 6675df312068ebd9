"""Closing observation windows into scored episodes, and handing them to the trainer in order.

The same passes as backend/store/sqlite/episodes.py, with one thing more: episodes are inserted
under a transaction-level advisory lock, so that of several backends finalizing at once only one
inserts at a time, and seqs commit in the order they are drawn (the trainer's cursor relies on it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psycopg

from backend.store.postgres.database import Database
from backend.store.postgres.locks import EPISODES
from backend.store.postgres.quarantine import COMPLETIONS, EVENTS, Unreadable, put_aside
from backend.store.rows import episode_of, json_column, read_events, score_columns
from core import wire
from core.confidence import cursor_place
from core.config import RewardConfig
from core.rewards import score_episode

# Completions scored per transaction: bounds how long one finalize pass holds the lock.
_FINALIZE_CHUNK = 500

_PAGE = (
    "SELECT e.seq, e.completion_id, c.user_id, c.model_version, c.prompt_ids, c.completion_ids,"
    " c.token_logprobs, c.temperature, c.text, e.outcome, e.reward, c.created_at,"
    " e.finalized_at, e.accept_visible_ms, c.context, c.evaluation, c.decision"
    " FROM episodes e JOIN completions c ON c.completion_id = e.completion_id"
    " WHERE e.seq > %s AND e.seq <= %s AND e.reward IS NOT NULL AND c.purged_at IS NULL"
    " AND (NOT c.evaluation OR %s)"
    f" AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.tbl = '{COMPLETIONS}'"
    " AND q.row_key = e.completion_id)"
    " ORDER BY e.seq LIMIT %s"
)


class EpisodesMixin:
    _db: Database

    async def finalize_due(
        self, now: float, window_s: float, rewards: RewardConfig, min_visible_ms: float
    ) -> int:
        """Score and close every due open completion (see the Store interface). A row that
        cannot be read is set aside and the pass goes on."""
        total = 0
        while True:
            async with self._db.transaction(lock=EPISODES) as conn:
                cursor = await conn.execute(
                    "SELECT completion_id, text FROM completions WHERE finalized_at IS NULL"
                    " AND (created_at + %s <= %s OR final_seen OR text = '')"
                    " ORDER BY created_at, completion_id LIMIT %s",
                    (window_s, now, _FINALIZE_CHUNK),
                )
                due = await cursor.fetchall()
                if not due:
                    return total
                events, unreadable = await _events_of(conn, [row[0] for row in due])
                scored = []
                for cid, text in due:
                    try:
                        score = score_episode(text, events.get(cid, []), rewards, min_visible_ms)
                    except Exception as error:  # whatever is wrong with the row: it alone is set aside
                        unreadable.append(Unreadable.of(COMPLETIONS, cid, error))
                        continue
                    scored.append((cid, score))
                if unreadable:
                    await put_aside(conn, unreadable, now)
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO episodes (completion_id, outcome, reward, similarity, accept_visible_ms,"
                        " finalized_at) VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (completion_id) DO NOTHING",
                        [(cid, *score_columns(s), now) for cid, s in scored],
                    )
                await conn.execute(
                    "UPDATE completions SET finalized_at = %s WHERE completion_id = ANY(%s)",
                    (now, [row[0] for row in due]),
                )
            total += len(due)
            if len(due) < _FINALIZE_CHUNK:
                return total

    async def episodes_after(
        self, cursor: int, limit: int, include_evaluation: bool = False
    ) -> wire.EpisodesPage:
        """Trainable episodes with seq > cursor, oldest first (see the Store interface)."""
        async with self._db.pool.connection() as conn:
            top_row = await (await conn.execute("SELECT MAX(seq) FROM episodes")).fetchone()
            # Seqs at or below `top` are committed and final: episodes are inserted under one lock.
            top = top_row[0] if top_row and top_row[0] is not None else cursor
            if limit <= 0 or top <= cursor:
                return wire.EpisodesPage(episodes=[], next_cursor=cursor)
            episodes: list[wire.Episode] = []
            after = cursor
            while True:
                want = limit - len(episodes)
                rows = await (await conn.execute(_PAGE, (after, top, include_evaluation, want))).fetchall()
                said, unreadable = await _events_of(
                    conn,
                    [r[1] for r in rows if r[8]],
                    kinds=(wire.EventKind.REWRITE, wire.EventKind.SURVIVAL),
                )
                for r in rows:
                    try:
                        episodes.append(_episode(r, said.get(r[1], [])))
                    except Exception as error:  # whatever is wrong with the row: it alone is set aside
                        unreadable.append(Unreadable.of(COMPLETIONS, r[1], error))
                if unreadable:
                    async with conn.transaction():
                        await put_aside(conn, unreadable, time.time())
                if len(rows) < want:
                    return wire.EpisodesPage(episodes=episodes, next_cursor=top)
                after = rows[-1][0]
                if len(episodes) == limit:
                    return wire.EpisodesPage(episodes=episodes, next_cursor=after)

    async def rescore(self, rewards: RewardConfig, min_visible_ms: float) -> int:
        """Score every finalized episode again from its stored events. Returns how many changed."""
        changed = 0
        after = 0
        while True:
            async with self._db.transaction() as conn:
                cursor = await conn.execute(
                    "SELECT e.seq, e.completion_id, c.text, e.outcome, e.reward, e.similarity,"
                    " e.accept_visible_ms FROM episodes e JOIN completions c"
                    " ON c.completion_id = e.completion_id WHERE e.seq > %s AND c.purged_at IS NULL"
                    " ORDER BY e.seq LIMIT %s",
                    (after, _FINALIZE_CHUNK),
                )
                rows = await cursor.fetchall()
                if not rows:
                    return changed
                events, unreadable = await _events_of(conn, [r[1] for r in rows])
                updates = []
                for seq, cid, text, *old in rows:
                    try:
                        new = score_columns(score_episode(text, events.get(cid, []), rewards, min_visible_ms))
                    except Exception as error:  # the episode keeps its score; the row is set aside
                        unreadable.append(Unreadable.of(COMPLETIONS, cid, error))
                        continue
                    if new != tuple(old):
                        updates.append((*new, seq))
                if unreadable:
                    await put_aside(conn, unreadable, time.time())
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "UPDATE episodes SET outcome = %s, reward = %s, similarity = %s,"
                        " accept_visible_ms = %s WHERE seq = %s",
                        updates,
                    )
            changed += len(updates)
            after = rows[-1][0]


def _episode(r: Any, said: list[wire.Event]) -> wire.Episode:
    """One row of the trainer's page as an episode; ValueError (and kin) when it cannot be read."""
    context = json_column("context", r[14])
    prefix = context.get("prefix") if isinstance(context, dict) else None
    return episode_of(r, said, cursor_place(prefix) if isinstance(prefix, str) else "", r[15], r[16])


async def _events_of(
    conn: psycopg.AsyncConnection, completion_ids: list[str], kinds: Sequence[wire.EventKind] = ()
) -> tuple[dict[str, list[wire.Event]], list[Unreadable]]:
    """The stored events of each completion (only those of `kinds`, when given), in client order;
    and the rows that could not be read, for the caller to set aside."""
    events: dict[str, list[wire.Event]] = defaultdict(list)
    unreadable: list[Unreadable] = []
    if not completion_ids:
        return events, unreadable
    only = " AND kind = ANY(%s)" if kinds else ""
    params: list[Any] = [completion_ids] + ([[kind.value for kind in kinds]] if kinds else [])
    cursor = await conn.execute(
        "SELECT completion_id, payload, event_id FROM events"
        f" WHERE completion_id = ANY(%s){only} ORDER BY client_ts, id",
        params,
    )
    rows = await cursor.fetchall()
    read_events(rows, events, unreadable, lambda row, error: Unreadable.of(EVENTS, row[2], error))
    return events, unreadable
