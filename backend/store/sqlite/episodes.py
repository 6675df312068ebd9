"""Closing observation windows into scored episodes, and handing them to the trainer in order."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import aiosqlite

from backend.store.rows import episode_of, read_events, score_columns
from backend.store.sqlite.database import Database
from backend.store.sqlite.quarantine import COMPLETIONS, EVENTS, Unreadable, put_aside
from core import wire
from core.confidence import cursor_place
from core.config import RewardConfig
from core.rewards import score_episode

# Completions scored per transaction: bounds how long one finalize pass holds the write lock.
_FINALIZE_CHUNK = 500
_IN_CHUNK = 500

# The trainer's page: episodes with their completions, less the completions set aside, and less
# evaluation ones unless asked for.
_PAGE = (
    "SELECT e.seq, e.completion_id, c.user_id, c.model_version, c.prompt_ids, c.completion_ids,"
    " c.token_logprobs, c.temperature, c.text, e.outcome, e.reward, c.created_at,"
    " e.finalized_at, e.accept_visible_ms,"
    # json_extract fails the whole statement on one malformed context: look only into valid ones.
    " CASE WHEN json_valid(c.context) THEN json_extract(c.context, '$.prefix') END,"
    " json_valid(c.context), c.rowid, c.evaluation, c.decision"
    " FROM episodes e JOIN completions c ON c.completion_id = e.completion_id"
    " WHERE e.seq > ? AND e.seq <= ? AND e.reward IS NOT NULL AND c.purged_at IS NULL"
    " AND (c.evaluation = 0 OR ?)"
    f" AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.tbl = '{COMPLETIONS}'"
    " AND q.row_key = e.completion_id)"
    " ORDER BY e.seq LIMIT ?"
)


class EpisodesMixin:
    _db: Database

    async def finalize_due(
        self, now: float, window_s: float, rewards: RewardConfig, min_visible_ms: float
    ) -> int:
        """Score and close every open completion whose window has ended or whose life has ended.

        Due: created_at + window_s ≤ now, or an event with final=True arrived, or an abstention
        (nothing was shown, so there is nothing to observe). Every one gets an episodes row, even
        with a NULL reward, so the finalizer never looks at it again. Returns how many closed.

        A row that cannot be read is set aside (quarantine.py) and the pass goes on: an
        unreadable event is left out of its completion's score, and a completion that cannot be
        scored at all is closed without an episode.
        """
        total = 0
        while True:
            async with self._db.transaction() as db:
                due = await db.execute_fetchall(
                    "SELECT rowid, completion_id, text FROM completions"
                    " WHERE finalized_at IS NULL AND (created_at + ? <= ? OR final_seen = 1 OR text = '')"
                    " ORDER BY created_at, completion_id LIMIT ?",
                    (window_s, now, _FINALIZE_CHUNK),
                )
                if not due:
                    return total
                # A completion scored on the events that could be read, its unreadable ones left
                # out: each event is one observation on its own, and the rest say what they say,
                # as if the bad one had been refused at ingest (as today's backend refuses it).
                # Holding the episode open for an event that will never parse would lose it all.
                events, unreadable = await _events_of(db, [row[1] for row in due])
                scored = []
                for rowid, cid, text in due:
                    try:
                        if not isinstance(cid, str):
                            raise ValueError("completion_id: missing")
                        score = score_episode(text, events.get(cid, []), rewards, min_visible_ms)
                    except Exception as error:  # whatever is wrong with the row: it alone is set aside
                        unreadable.append(Unreadable.of(COMPLETIONS, cid, rowid, error))
                        continue
                    scored.append((cid, score))
                if unreadable:
                    await put_aside(db, unreadable, now)
                # A completion whose episode exists already (its finalized_at cleared by hand, say)
                # keeps that episode.
                await db.executemany(
                    "INSERT INTO episodes (completion_id, outcome, reward, similarity, accept_visible_ms,"
                    " finalized_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (completion_id) DO NOTHING",
                    [(cid, *score_columns(s), now) for cid, s in scored],
                )
                await db.executemany(
                    "UPDATE completions SET finalized_at = ? WHERE rowid = ?", [(now, row[0]) for row in due]
                )
            total += len(due)
            if len(due) < _FINALIZE_CHUNK:
                return total

    async def episodes_after(
        self, cursor: int, limit: int, include_evaluation: bool = False
    ) -> wire.EpisodesPage:
        """Trainable episodes (non-NULL reward) with seq > cursor, oldest first; evaluation ones
        only with `include_evaluation`.

        next_cursor moves past untrainable rows too, so the trainer never rescans them: when the
        page is not full it jumps to the newest seq that existed when the page was read. A row
        that cannot be read is set aside and the page filled from the rows after it.
        """
        db = self._db.reader
        top_rows = await db.execute_fetchall("SELECT MAX(seq) FROM episodes")
        # Rows at or below `top` are committed and final: one writer hands out seqs in order.
        top = top_rows[0][0] if top_rows and top_rows[0][0] is not None else cursor
        if limit <= 0 or top <= cursor:
            return wire.EpisodesPage(episodes=[], next_cursor=cursor)
        episodes: list[wire.Episode] = []
        after = cursor
        while True:
            want = limit - len(episodes)
            rows = await db.execute_fetchall(_PAGE, (after, top, include_evaluation, want))
            # What the users wrote instead, for the trainer's corrections and DPO pairs.
            said, unreadable = await _events_of(
                db, [r[1] for r in rows if r[8]], kinds=(wire.EventKind.REWRITE, wire.EventKind.SURVIVAL)
            )
            for r in rows:
                try:
                    episodes.append(_episode(r, said.get(r[1], [])))
                except Exception as error:  # whatever is wrong with the row: it alone is set aside
                    unreadable.append(Unreadable.of(COMPLETIONS, r[1], r[16], error))
            if unreadable:
                async with self._db.transaction() as writer:
                    await put_aside(writer, unreadable, time.time())
            if len(rows) < want:
                return wire.EpisodesPage(episodes=episodes, next_cursor=top)
            after = rows[-1][0]
            if len(episodes) == limit:
                return wire.EpisodesPage(episodes=episodes, next_cursor=after)

    async def rescore(self, rewards: RewardConfig, min_visible_ms: float) -> int:
        """Score every finalized episode again from its stored events. Returns how many changed.

        A trainer whose cursor is past a re-scored episode does not see it again; re-read from 0.
        """
        changed = 0
        after = 0
        while True:
            async with self._db.transaction() as db:
                rows = await db.execute_fetchall(
                    "SELECT e.seq, e.completion_id, c.text, c.rowid, e.outcome, e.reward, e.similarity,"
                    " e.accept_visible_ms FROM episodes e JOIN completions c"
                    " ON c.completion_id = e.completion_id WHERE e.seq > ? AND c.purged_at IS NULL"
                    " ORDER BY e.seq LIMIT ?",
                    (after, _FINALIZE_CHUNK),
                )
                if not rows:
                    return changed
                events, unreadable = await _events_of(db, [r[1] for r in rows])
                updates = []
                for seq, cid, text, rowid, *old in rows:
                    try:
                        new = score_columns(score_episode(text, events.get(cid, []), rewards, min_visible_ms))
                    except Exception as error:  # the episode keeps its score; the row is set aside
                        unreadable.append(Unreadable.of(COMPLETIONS, cid, rowid, error))
                        continue
                    if new != tuple(old):
                        updates.append((*new, seq))
                if unreadable:
                    await put_aside(db, unreadable, time.time())
                await db.executemany(
                    "UPDATE episodes SET outcome = ?, reward = ?, similarity = ?, accept_visible_ms = ?"
                    " WHERE seq = ?",
                    updates,
                )
            changed += len(updates)
            after = rows[-1][0]


def _episode(r: Any, said: list[wire.Event]) -> wire.Episode:
    """One row of the trainer's page as an episode; ValueError (and kin) when it cannot be read."""
    if not r[15]:
        raise ValueError("context: not valid JSON")
    return episode_of(r, said, cursor_place(r[14]) if r[14] is not None else "", r[17], r[18])


async def _events_of(
    db: aiosqlite.Connection, completion_ids: list[str], kinds: Sequence[wire.EventKind] = ()
) -> tuple[dict[str, list[wire.Event]], list[Unreadable]]:
    """The stored events of each completion (only those of `kinds`, when given), in client order;
    and the rows that could not be read, for the caller to set aside."""
    events: dict[str, list[wire.Event]] = defaultdict(list)
    unreadable: list[Unreadable] = []
    only = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else ""
    for start in range(0, len(completion_ids), _IN_CHUNK):
        chunk = completion_ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = await db.execute_fetchall(
            "SELECT completion_id, payload, rowid, event_id FROM events"
            f" WHERE completion_id IN ({marks}){only} ORDER BY client_ts, rowid",
            [*chunk, *(kind.value for kind in kinds)],
        )
        read_events(rows, events, unreadable, lambda row, error: Unreadable.of(EVENTS, row[3], row[2], error))
    return events, unreadable
