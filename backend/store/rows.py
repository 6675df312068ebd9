"""Stored rows read back into the interface's typed results, the same whichever database held them
(sqlite/, postgres/): each store runs its own SQL and hands the rows here, so the two cannot drift
apart in what a row means or in what makes one unreadable."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pydantic import ConfigDict

from backend.store.interface import EVENTS, STATES, Entered, SeriesPoint, Slice, Transition
from core import wire
from core.rewards import Scored, user_wrote

# The columns of an events row moved into quarantine, in this order.
EVENT_COLUMNS = ("event_id", "completion_id", "kind", "payload", "client_ts", "received_at")

_Unreadable = TypeVar("_Unreadable")


class StoredEpisode(wire.Episode):
    """An episode as read back: no NaN or infinity anywhere, for JSON has neither and the trainer's
    page would fail on it (a NaN log-prob, say, stored by an older version)."""

    model_config = ConfigDict(allow_inf_nan=False)


def score_columns(scored: Scored) -> tuple[str, float | None, float | None, float | None]:
    """An episode's score as the episodes table's outcome, reward, similarity, accept_visible_ms."""
    return scored.outcome, scored.reward, scored.similarity, scored.accept_visible_ms


def json_column(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{name}: not JSON ({error})") from None


def decision_column(decision: wire.ServingDecision | None) -> str | None:
    """How serving decided a completion's showing, as the completions table's decision column."""
    return None if decision is None else decision.model_dump_json()


def episode_of(
    r: Sequence[Any], said: list[wire.Event], place: str, evaluation: Any, decision: str | None = None
) -> wire.Episode:
    """The first 14 columns of a row of the trainer's page (seq ... accept_visible_ms) as an episode;
    ValueError (and kin) when it cannot be read. `place` and `evaluation` as each store reads them;
    `decision` as its column holds it (NULL: not recorded, as before the column was)."""
    return StoredEpisode(
        seq=r[0],
        completion_id=r[1],
        user_id=r[2],
        model_version=r[3],
        prompt_ids=json_column("prompt_ids", r[4]),
        completion_ids=json_column("completion_ids", r[5]),
        token_logprobs=json_column("token_logprobs", r[6]),
        temperature=r[7],
        text=r[8],
        outcome=r[9],
        reward=r[10],
        created_at=r[11],
        finalized_at=r[12],
        accept_visible_ms=r[13],
        rewrite=user_wrote(r[8], said),
        place=place,
        evaluation=bool(evaluation),
        decision=None if decision is None else wire.ServingDecision.model_validate_json(decision),
    )


def read_events(
    rows: Iterable[Sequence[Any]],
    events: dict[str, list[wire.Event]],
    unreadable: list[_Unreadable],
    set_aside: Callable[[Sequence[Any], Exception], _Unreadable],
) -> None:
    """Parse events rows (completion_id, payload, ...) into `events`; a row that does not parse goes
    to `unreadable` as `set_aside` records it, and the rest go on."""
    # One parse per row, each guarded: a try costs nothing until it catches, and pydantic's
    # parse of the whole chunk as one JSON list measured slower than this, not faster.
    for row in rows:
        try:
            events[row[0]].append(wire.Event.model_validate_json(row[1]))
        except Exception as error:  # whatever is wrong with the row: it alone is set aside
            unreadable.append(set_aside(row, error))


def set_aside_event(key: str, reason: str, content: dict[str, Any], now: float) -> tuple[Any, ...]:
    """The quarantine row (tbl, row_key, reason, content, stored_at, at) of an events row moved there
    whole, `content` its columns by name."""
    return (EVENTS, key, reason, _content_json(content), _stored_at(content), now)


def _content_json(row: dict[str, Any]) -> str:
    # Whatever the columns hold: bytes as hex, NaN and infinity as Python writes them.
    return json.dumps(row, default=lambda value: value.hex() if isinstance(value, bytes) else str(value))


def _stored_at(row: dict[str, Any]) -> float | None:
    # A time that is no number, or infinite, leaves the record's own time to retention.
    at = row["received_at"]
    return float(at) if isinstance(at, int | float) and math.isfinite(at) else None


def check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown checkpoint state {state!r}; expected one of {sorted(STATES)}")


def checkpoint_info(row: Sequence[Any]) -> wire.CheckpointInfo:
    """A row of (version, state, parent_version, created_at, metrics)."""
    return wire.CheckpointInfo(
        version=row[0], state=row[1], parent_version=row[2], created_at=row[3], metrics=json.loads(row[4])
    )


def entered_of(row: Sequence[Any]) -> Entered:
    """A row of (reason, metrics, at)."""
    return Entered(reason=row[0], metrics=json.loads(row[1]), at=row[2])


def transitions_of(rows: Iterable[Sequence[Any]]) -> list[Transition]:
    """Rows of (id, version, from_state, to_state, reason, metrics, at)."""
    return [
        Transition(
            id=n, version=v, from_state=old, to_state=new, reason=why, metrics=json.loads(metrics), at=at
        )
        for n, v, old, new, why, metrics, at in rows
    ]


def series_points(rows: Iterable[Sequence[Any]], bucket_s: float) -> list[SeriesPoint]:
    """Rows of (version, bucket, served, finalized, trainable, reward_sum, rated, accepted, arc)."""
    return [
        SeriesPoint(
            version=version,
            at=bucket * bucket_s,
            served=served,
            mean_reward=reward_sum / trainable if trainable else None,
            accept_rate=accepted / rated if rated else None,
            arc_per_100=100 * arc / finalized if finalized else None,
        )
        for version, bucket, served, finalized, trainable, reward_sum, rated, accepted, arc in rows
    ]


def slices_of(rows: Iterable[Sequence[Any]]) -> list[Slice]:
    """Rows of (client, language, served, shown, finalized, trainable, rated, accepted, reward_sum,
    arc_sum); a count SQLite's SUM leaves NULL over no rows is 0."""
    return [
        Slice(
            client=row[0],
            language=row[1],
            served=row[2],
            shown=row[3] or 0,
            finalized=row[4],
            trainable=row[5] or 0,
            rated=row[6] or 0,
            accepted=row[7] or 0,
            reward_sum=float(row[8]),
            arc_sum=float(row[9]),
        )
        for row in rows
    ]
