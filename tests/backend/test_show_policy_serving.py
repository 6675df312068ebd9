"""The learned show-or-abstain policy at serving, against a real backend with the tiny model: a
version's checkpoint ships a show policy; its trigger skips the model call, its filter withholds
what it would not show, its exploration shows some anyway with their propensity, and an
evaluation may ask for the floors instead. Every decision comes back on the trainer's episodes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningBackend, bearer, make_adapter, start_backend, stop_backend
from prometheus_client.parser import text_string_to_metric_families

from core.show_policy import FILTER_FEATURES, TRIGGER_FEATURES, Logistic, ShowPolicy
from core.wire import ADAPTER_FILES, CheckpointMetadata, EpisodesPage, ModelInfo

SCRAPER = "fw_metrics-only-" + uuid.uuid4().hex
PREFIX = "def add(a, b):\n    return "
SIGNALS = {"recent_shown": 4, "recent_accepted": 3, "since_keystroke_ms": 1500.0}
# Sure to be over any threshold, or under it.
YES, NO = Logistic(bias=20.0, weights={}), Logistic(bias=-20.0, weights={})


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    state = tmp_path_factory.mktemp("show-policy") / "state"
    running = start_backend(tiny_model_dir, state, FLYWHEEL_BACKEND__METRICS_TOKEN=SCRAPER)
    yield running
    stop_backend(running)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


def go_live(server: RunningBackend, adapter: Path, base_model: Path, **rules: Any) -> str:
    """Upload the adapter with these serving rules in its metadata; live at once (canary share 0)."""
    metadata = CheckpointMetadata(base_model=str(base_model), parent_version="base", **rules)
    files = {name: (name, (adapter / name).read_bytes()) for name in ADAPTER_FILES}
    answer = httpx.post(
        f"{server.url}/v1/checkpoints",
        data={"metadata": metadata.model_dump_json()},
        files=files,
        headers=server.admin,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    version = answer.json()["version"]
    info = ModelInfo.model_validate(httpx.get(f"{server.url}/v1/model", headers=server.client).json())
    assert info.live_version == version
    return version


def complete(
    server: RunningBackend, prefix: str = "def add(a, b):\n    return ", **extra: Any
) -> httpx.Response:
    body = {"context": {"prefix": prefix, "suffix": "", "path": "a.py"}, "signals": SIGNALS, **extra}
    return httpx.post(f"{server.url}/v1/complete", json=body, headers=server.client, timeout=60)


def episodes_of(server: RunningBackend, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The episodes of these answers, in their order, once finalized (a shown one is closed by a
    final rejection)."""
    import time

    events = [
        {
            "event_id": uuid.uuid4().hex,
            "completion_id": a["completion_id"],
            "client_ts": 1.0,
            "kind": "rejected",
            "visible_ms": 800,
            "final": True,
        }
        for a in answers
        if a["text"]
    ]
    if events:
        stored = httpx.post(f"{server.url}/v1/events", json={"events": events}, headers=server.client)
        assert stored.json()["stored"] == len(events)
    wanted = [a["completion_id"] for a in answers]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        params = {"cursor": 0, "limit": 5000, "include_evaluation": True}
        page = httpx.get(f"{server.url}/v1/episodes", params=params, headers=server.admin).json()
        found = {e["completion_id"]: e for e in EpisodesPage.model_validate(page).model_dump()["episodes"]}
        if all(cid in found for cid in wanted):
            return [found[cid] for cid in wanted]
        time.sleep(0.2)
    raise AssertionError("episodes never finalized")


def scraped(server: RunningBackend, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=bearer(SCRAPER)).raise_for_status().text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_the_learned_policy_decides_calls_shows_and_explores(
    server: RunningBackend, adapter: Path, tiny_model_dir: Path
) -> None:
    # Before any show policy: the floors decide, and say so on the episode.
    base = complete(server).json()
    [episode] = episodes_of(server, [base])
    assert episode["decision"]["rule"] == "floors" and episode["decision"]["propensity"] == 1.0
    assert episode["decision"]["called"] is True

    # A trigger that skips every call: abstentions without the model, recorded with the trigger's
    # features (the client's signals among them) and counted in /metrics.
    skipping = ShowPolicy(filter=YES, threshold=0.5, trigger=NO, trigger_threshold=0.5, explore=0.0)
    go_live(server, adapter, tiny_model_dir, show_policy=skipping)
    info = httpx.get(f"{server.url}/v1/model", headers=server.client).json()
    assert ShowPolicy.model_validate(info["show_policy"]) == skipping
    batches, skipped = (
        scraped(server, "flywheel_batches_total"),
        scraped(server, "flywheel_skipped_model_calls_total"),
    )
    answers = [complete(server).json() for _ in range(4)]
    assert [a["text"] for a in answers] == [""] * 4
    assert scraped(server, "flywheel_batches_total") == batches  # the engine never ran
    assert scraped(server, "flywheel_skipped_model_calls_total") == skipped + 4
    for episode in episodes_of(server, answers):
        decision = episode["decision"]
        assert (decision["rule"], decision["called"], decision["shown"]) == ("learned", False, False)
        assert set(decision["features"]) == set(TRIGGER_FEATURES)
        assert decision["features"]["recent_accept_rate"] == pytest.approx((3 + 1) / (4 + 2))
        assert decision["features"]["since_keystroke_known"] == 1.0
        assert episode["completion_ids"] == [] and episode["prompt_ids"] == []

    # A filter that withholds everything: the model is called, nothing is shown, and the filter's
    # features (the model's confidence among them) are kept though the tokens are not.
    withholding = ShowPolicy(filter=NO, threshold=0.5, explore=0.0)
    go_live(server, adapter, tiny_model_dir, show_policy=withholding)
    answers = [complete(server).json() for _ in range(3)]
    assert [a["text"] for a in answers] == [""] * 3
    for episode in episodes_of(server, answers):
        decision = episode["decision"]
        assert (decision["rule"], decision["called"], decision["shown"]) == ("learned", True, False)
        assert set(decision["features"]) == set(FILTER_FEATURES)
        assert decision["features"]["confidence"] < 0
        assert episode["completion_ids"] == [] and episode["token_logprobs"] == []

    # Exploring half of what the filter withholds: some shown, each with propensity 0.5.
    exploring = ShowPolicy(filter=NO, threshold=0.5, explore=0.5)
    go_live(server, adapter, tiny_model_dir, show_policy=exploring)
    answers = [complete(server).json() for _ in range(24)]
    decisions = [e["decision"] for e in episodes_of(server, answers)]
    shown = [d for d in decisions if d["shown"]]
    assert 0 < len(shown) < len(decisions)
    assert all(d["propensity"] == pytest.approx(0.5) for d in shown)
    for answer, decision in zip(answers, decisions, strict=True):
        assert bool(answer["text"]) == decision["shown"]

    # An evaluation may ask for the floors (none here: everything is shown); nobody else may.
    floors = [complete(server, evaluation=True, show_rule="floors").json() for _ in range(3)]
    for answer, episode in zip(floors, episodes_of(server, floors), strict=True):
        decision = episode["decision"]
        assert (decision["rule"], decision["propensity"], decision["shown"]) == (
            "floors",
            1.0,
            bool(answer["text"]),
        )
        assert "confidence" in decision["features"]
    assert any(a["text"] for a in floors)
    refused = complete(server, show_rule="floors")
    assert refused.status_code == 422
    assert "show_rule" in refused.text and "evaluation" in refused.text
