"""Other clients' protocols on a real backend (tiny model, loopback HTTP): OpenAI's completions with
fill-in-the-middle through the `openai` package itself, and Tabby's completions and events as its
agent sends them (tests/editors/test_tabby_agent.py drives the agent itself). What the backend
recorded is read from its SQLite file."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningBackend, start_backend, stop_backend

from core.local_tokens import CLIENT, read_token

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.timeout(120, func_only=True)

PREFIX = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        data = "
SUFFIX = "\n    return data\n"
WINDOW_S = 3


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    # A short observation window: an episode without a final event closes within the test.
    state = tmp_path_factory.mktemp("compat") / "state"
    running = start_backend(tiny_model_dir, state, FLYWHEEL_EPISODES__WINDOW_S=str(WINDOW_S))
    yield running
    stop_backend(running)


def rows(backend: RunningBackend, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    uri = f"file:{backend.data_dir / 'flywheel.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchall()


def wait_for(check: Any, what: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def episode(backend: RunningBackend, completion_id: str) -> tuple[str, float | None] | None:
    found = rows(backend, "SELECT outcome, reward FROM episodes WHERE completion_id = ?", completion_id)
    return found[0] if found else None


def openai_client(backend: RunningBackend, token: str | None = None) -> Any:
    return openai.OpenAI(
        base_url=f"{backend.url}/v1",
        api_key=token or read_token(backend.data_dir, CLIENT),
        max_retries=0,
        timeout=60,
    )


def openai_with_text(client: Any) -> tuple[str, str]:
    """An OpenAI-style completion that shows something (the tiny model abstains now and then)."""
    for attempt in range(20):
        answer = client.completions.create(
            model="flywheel", prompt=PREFIX + "x" * attempt, suffix=SUFFIX, max_tokens=16
        )
        assert answer.object == "text_completion" and len(answer.choices) == 1
        if answer.choices[0].text:
            return answer.id.removeprefix("cmpl-"), answer.choices[0].text
    raise AssertionError("the model abstained twenty times in a row")


def test_openai_fill_in_the_middle_is_served_and_recorded_untrained(backend: RunningBackend) -> None:
    client = openai_client(backend)
    completion_id, text = openai_with_text(client)
    stored = rows(
        backend,
        "SELECT client, language, text, context FROM completions WHERE completion_id = ?",
        completion_id,
    )
    assert len(stored) == 1
    client_kind, language, stored_text, context = stored[0]
    assert (client_kind, language, stored_text) == ("openai", "", text)
    assert json.loads(context)["suffix"] == SUFFIX
    # No outcome ever comes: when its window closes the episode has no reward, and the trainer's
    # feed (trainable episodes only) never carries it.
    assert wait_for(lambda: episode(backend, completion_id), "the episode") == ("no_feedback", None)
    feed = httpx.get(f"{backend.url}/v1/episodes", headers=backend.admin, timeout=10).json()
    assert completion_id not in {e["completion_id"] for e in feed["episodes"]}

    # Streamed, the same protocol's chunks add up to one completion.
    chunks = list(client.completions.create(model="flywheel", prompt=PREFIX, suffix=SUFFIX, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    streamed_id = chunks[0].id.removeprefix("cmpl-")
    assert rows(backend, "SELECT text FROM completions WHERE completion_id = ?", streamed_id) == [
        ("".join(c.choices[0].text for c in chunks),)
    ]
    assert [m.id for m in client.models.list()] == [backend_model(backend)]


def backend_model(backend: RunningBackend) -> str:
    return httpx.get(f"{backend.url}/v1/model", headers=backend.client, timeout=10).json()["base_model"]


def test_openai_needs_a_client_token_and_honours_no_telemetry(backend: RunningBackend) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai_client(backend, token="fw_not-a-token").completions.create(model="m", prompt=PREFIX)
    before = rows(backend, "SELECT COUNT(*) FROM completions")[0][0]
    answer = openai_client(backend).completions.create(model="m", prompt=PREFIX, user="flywheel:no-telemetry")
    assert len(answer.choices) == 1
    assert rows(backend, "SELECT COUNT(*) FROM completions")[0][0] == before


def tabby_complete(backend: RunningBackend, prefix: str) -> dict[str, Any]:
    body = {"language": "python", "segments": {"prefix": prefix, "suffix": SUFFIX, "filepath": "a.py"}}
    answer = httpx.post(f"{backend.url}/v1/completions", json=body, headers=backend.client, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tabby_event(backend: RunningBackend, kind: str, completion_id: str, **query: str) -> None:
    body = {"type": kind, "completion_id": completion_id, "choice_index": 0, "elapsed": 1500}
    answer = httpx.post(
        f"{backend.url}/v1/events", params=query, json=body, headers=backend.client, timeout=10
    )
    assert answer.status_code == 200, answer.text
    # The route's documented answer: stored here, as the Flywheel event it stands for.
    assert answer.json() == {"stored": 1, "duplicates": 0, "refused": []}


def served_with_text(backend: RunningBackend) -> tuple[str, str]:
    """A Tabby completion that shows something (the tiny model abstains now and then)."""
    for attempt in range(20):
        answer = tabby_complete(backend, PREFIX + "x" * attempt)
        if answer["choices"]:
            assert answer["choices"][0]["index"] == 0
            return answer["id"], answer["choices"][0]["text"]
    raise AssertionError("the model abstained twenty times in a row")


def test_tabby_events_become_an_episode_with_a_reward(backend: RunningBackend) -> None:
    accepted_id, text = served_with_text(backend)
    assert rows(backend, "SELECT client, language FROM completions WHERE completion_id = ?", accepted_id) == [
        ("tabby", "python")
    ]
    tabby_event(backend, "view", accepted_id)
    tabby_event(backend, "select", accepted_id, select_kind="line")
    tabby_event(backend, "select", accepted_id)
    kinds = [r[0] for r in rows(backend, "SELECT kind FROM events WHERE completion_id = ?", accepted_id)]
    assert sorted(kinds) == ["accepted", "partially_accepted", "shown"]
    partial = json.loads(
        rows(
            backend,
            "SELECT payload FROM events WHERE completion_id = ? AND kind = ?",
            accepted_id,
            "partially_accepted",
        )[0][0]
    )
    first_line = text.splitlines(keepends=True)[0]
    assert partial["accepted_chars"] == len(first_line.encode("utf-16-le")) // 2
    assert partial["visible_ms"] == 1500
    # The select is final: the episode closes before its window, accepted and kept whole.
    assert wait_for(lambda: episode(backend, accepted_id), "the accepted episode") == ("accepted", 0.75)

    dismissed_id, _ = served_with_text(backend)
    tabby_event(backend, "view", dismissed_id)
    tabby_event(backend, "dismiss", dismissed_id)
    assert wait_for(lambda: episode(backend, dismissed_id), "the dismissed episode") == ("rejected", -0.25)

    # Shown and left: when its window closes, ignored (scored as a rejection).
    left_id, _ = served_with_text(backend)
    tabby_event(backend, "view", left_id)
    assert wait_for(lambda: episode(backend, left_id), "the ignored episode") == ("ignored", -0.25)

    # A language the model does not serve: nothing shown, nothing recorded.
    before = rows(backend, "SELECT COUNT(*) FROM completions")[0][0]
    body = {"language": "markdown", "segments": {"prefix": "# Notes\n\nThe ", "suffix": ""}}
    answer = httpx.post(f"{backend.url}/v1/completions", json=body, headers=backend.client, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"] == []
    assert rows(backend, "SELECT COUNT(*) FROM completions")[0][0] == before

    # A body that is neither Flywheel's batch nor Tabby's event is refused.
    mixed = httpx.post(f"{backend.url}/v1/events", json={"nothing": 1}, headers=backend.client, timeout=10)
    assert mixed.status_code == 422
    health = httpx.get(f"{backend.url}/v1/health", headers=backend.client, timeout=10)
    assert health.status_code == 200 and {"model", "device"} <= health.json().keys()
    assert httpx.get(f"{backend.url}/v1/health", timeout=10).status_code == 401
    neither = httpx.post(f"{backend.url}/v1/completions", json={"x": 1}, headers=backend.client, timeout=10)
    assert neither.status_code == 422
