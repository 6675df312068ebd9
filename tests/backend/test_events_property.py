"""Mixed event batches against a real backend: valid events for real completions among invalid ones.

Hypothesis draws batches of valid events (for completions the backend served), copies of earlier
events (duplicates), and events that must be refused: a required field missing, a kind that is
none, NaN or infinity written raw in the JSON body, texts and ids too long, numbers out of range,
wrong types, items that are not objects, unknown completions (among them one served with telemetry
off, of which nothing is kept). For every batch:
- exactly the valid events are stored, each once, as their first copy (read from the SQLite file,
  read-only), and posting them again stores nothing: all duplicates;
- each invalid one is refused by its index, with its event id when it had one and a reason that
  names what was wrong;
- stored + duplicates + refused is the batch's length.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningBackend, start_backend, stop_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.wire import EventKind

REQUIRED = ("event_id", "completion_id", "kind", "client_ts")
NUMBERS = ("client_ts", "visible_ms", "delay_s", "similarity", "retained_chars")
KINDS = [kind.value for kind in EventKind]


@dataclass
class Served:
    backend: RunningBackend
    completions: list[str]
    # Served with telemetry off: the backend kept nothing of it, so its events are refused.
    unkept: str
    http: httpx.Client


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = start_backend(tiny_model_dir, tmp_path_factory.mktemp("events") / "state")
    try:
        with httpx.Client(base_url=running.url, headers=running.client, timeout=60) as http:

            def complete(telemetry: bool) -> str:
                body = {"context": {"prefix": "import os\n"}, "max_new_tokens": 2, "telemetry": telemetry}
                answer = http.post("/v1/complete", json=body)
                assert answer.status_code == 200, answer.text
                return answer.json()["completion_id"]

            yield Served(running, [complete(True) for _ in range(3)], complete(False), http)
    finally:
        stop_backend(running)


@dataclass
class Item:
    """One element of a batch, and what the backend must do with it."""

    body: Any
    # "valid", "reuse" (a valid event with the id of an earlier item), "refused"
    fate: str
    # What a refusal's reason must name ("" for anything non-empty).
    names: str = ""


# A valid event's fields, ids left out: the test gives each batch ids of its own (below).
finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
# A count of a suggestion's characters: at most an event text's length (wire.MAX_EVENT_TEXT).
chars = st.floats(min_value=0, max_value=20_000, allow_nan=False)
event_fields = st.fixed_dictionaries(
    {"kind": st.sampled_from(KINDS), "client_ts": finite},
    optional={
        "visible_ms": positive,
        "accepted_chars": st.integers(min_value=0, max_value=20_000),
        "delay_s": positive,
        "similarity": st.floats(min_value=0, max_value=1),
        "retained_chars": chars,
        "text": st.text(max_size=40) | st.just("x" * 20_000),
        "reason": st.text(max_size=64),
        "final": st.booleans(),
    },
)
not_a_number = st.sampled_from([math.nan, math.inf, -math.inf])
no_kind = st.text().filter(lambda kind: kind not in KINDS)
# (field, value) pairs pydantic must refuse: wrong types, out of range, too long, too short.
bad_values = st.one_of(
    st.tuples(st.just("kind"), st.one_of(no_kind, st.integers(), st.none())),
    st.tuples(st.just("client_ts"), st.one_of(st.just("soon"), st.lists(finite, max_size=2), st.just({}))),
    st.tuples(
        st.just("accepted_chars"),
        st.one_of(st.just(1.5), st.just("many"), st.integers(max_value=-1), st.integers(min_value=20_001)),
    ),
    st.tuples(st.sampled_from(["visible_ms", "delay_s", "retained_chars"]), st.floats(max_value=-1e-9)),
    st.tuples(st.just("retained_chars"), st.floats(min_value=20_000.001, allow_infinity=False)),
    st.tuples(st.just("similarity"), st.sampled_from([1.0000001, 2.0, -0.5])),
    st.tuples(st.just("final"), st.sampled_from(["maybe", 2, [], {}])),
    st.tuples(st.just("text"), st.one_of(st.just("t" * 20_001), st.integers())),
    st.tuples(
        st.just("reason"), st.one_of(st.text(min_size=65, max_size=80), st.lists(st.none(), max_size=1))
    ),
    st.tuples(st.just("completion_id"), st.one_of(st.just("c" * 65), st.just(""), st.none(), st.integers())),
    st.tuples(st.just("event_id"), st.one_of(st.just("short"), st.just("e" * 65), st.integers(10**8, 10**9))),
)
not_objects = st.one_of(st.integers(), st.text(max_size=9), st.none(), st.booleans(), st.lists(st.integers()))
# What an item becomes: (how, detail), turned into an Item once the batch's ids are known.
drafts = st.one_of(
    st.tuples(st.just("valid"), event_fields),
    st.tuples(st.just("missing"), st.tuples(event_fields, st.sampled_from(REQUIRED))),
    st.tuples(st.just("bad"), st.tuples(event_fields, bad_values)),
    st.tuples(st.just("bad"), st.tuples(event_fields, st.tuples(st.sampled_from(NUMBERS), not_a_number))),
    st.tuples(st.just("not an object"), not_objects),
    st.tuples(st.just("unknown"), st.tuples(event_fields, st.booleans())),
    # An earlier item's id on a valid event: a duplicate if that id was stored, new otherwise.
    st.tuples(st.just("reuse"), st.tuples(event_fields, st.integers(min_value=0))),
)


def make_items(drawn: list[tuple[str, Any]], served: Served, rng: Any) -> list[Item]:
    prefix = uuid.uuid4().hex[:12]  # the ids of this batch were never sent before
    items: list[Item] = []
    for index, (how, detail) in enumerate(drawn):
        event_id = f"{prefix}-{index}"
        completion_id = rng.choice(served.completions)
        if how == "valid":
            items.append(Item({**detail, "event_id": event_id, "completion_id": completion_id}, "valid"))
        elif how == "missing":
            fields, missing = detail
            body = {**fields, "event_id": event_id, "completion_id": completion_id}
            del body[missing]
            items.append(Item(body, "refused", missing))
        elif how == "bad":
            fields, (name, value) = detail
            body = {**fields, "event_id": event_id, "completion_id": completion_id, name: value}
            items.append(Item(body, "refused", name))
        elif how == "not an object":
            items.append(Item(detail, "refused"))
        elif how == "unknown":
            fields, never_served = detail
            unknown = uuid.uuid4().hex if never_served else served.unkept
            body = {**fields, "event_id": event_id, "completion_id": unknown}
            items.append(Item(body, "refused", "completion"))
        else:
            fields, which = detail
            earlier = [item for item in items if _good_id(item.body)]
            if earlier:
                event_id = earlier[which % len(earlier)].body["event_id"]
            items.append(Item({**fields, "event_id": event_id, "completion_id": completion_id}, "reuse"))
    return items


def _good_id(body: Any) -> bool:
    event_id = body.get("event_id") if isinstance(body, dict) else None
    return isinstance(event_id, str) and 8 <= len(event_id) <= 64


def expected(items: list[Item]) -> tuple[dict[str, dict[str, Any]], int, set[int]]:
    """The events to be stored (first copies by id), the duplicates, the refused indices."""
    stored: dict[str, dict[str, Any]] = {}
    duplicates = 0
    refused = set()
    for index, item in enumerate(items):
        if item.fate == "refused":
            refused.add(index)
        elif item.body["event_id"] in stored:
            duplicates += 1
        else:
            stored[item.body["event_id"]] = item.body
    return stored, duplicates, refused


def post(served: Served, events: list[Any]) -> dict[str, Any]:
    # Written by json.dumps: NaN and infinity go into the body raw, as a careless client sends them.
    body = json.dumps({"events": events}, allow_nan=True)
    answer = served.http.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def rows(served: Served, event_ids: list[str]) -> dict[str, tuple[str, str]]:
    """What the SQLite file holds for these ids, read as a separate read-only reader would."""
    path = served.backend.data_dir / "flywheel.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT event_id, completion_id, kind FROM events"
            " WHERE event_id IN (SELECT value FROM json_each(?))",
            (json.dumps(event_ids),),
        ).fetchall()
    return {event_id: (completion_id, kind) for event_id, completion_id, kind in found}


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(drawn=st.lists(drafts, min_size=3, max_size=25), rng=st.randoms(use_true_random=False))
def test_a_mixed_batch_stores_the_valid_events_and_refuses_each_invalid_one(
    served: Served, drawn: list[tuple[str, Any]], rng: Any
) -> None:
    items = make_items(drawn, served, rng)
    to_store, duplicates, refused = expected(items)
    answer = post(served, [item.body for item in items])

    assert answer["stored"] == len(to_store)
    assert answer["duplicates"] == duplicates
    assert {r["index"] for r in answer["refused"]} == refused
    assert answer["stored"] + answer["duplicates"] + len(answer["refused"]) == len(items)
    for refusal in answer["refused"]:
        item = items[refusal["index"]]
        assert refusal["reason"] and item.names in refusal["reason"], (refusal, item.body)
        sent_id = item.body.get("event_id") if isinstance(item.body, dict) else None
        assert refusal["event_id"] == (sent_id if isinstance(sent_id, str) else None)

    # Every string id of the batch: only the stored ones are in the file, as their first copy.
    ids = sorted({item.body["event_id"] for item in items if _good_id(item.body)})
    assert rows(served, ids) == {
        event_id: (body["completion_id"], body["kind"]) for event_id, body in to_store.items()
    }
    again = post(served, list(to_store.values()))
    assert again == {"stored": 0, "duplicates": len(to_store), "refused": []}
