"""/metrics for operators against a real backend: the metrics role may scrape and do nothing else,
whether its token is configured (backend.metrics_token) or stored (`flywheel token create --role
metrics`, POST /v1/admin/tokens); the figures an operator watches are there (counters `*_total`,
histograms in seconds, time to first token from the in-process engine, queue depth, trainer and
canary state), and every metric the Grafana dashboard (deploy/grafana/flywheel.json) queries
exists in a real scrape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningBackend, bearer, start_backend, stop_backend
from prometheus_client.parser import text_string_to_metric_families

from backend.auth import METRICS, NoTokens, ensure_tokens, hash_token, person_of
from backend.store import Store
from core.config import Settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "flywheel.json"
SCRAPER = "fw_metrics-only-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    state = tmp_path_factory.mktemp("metrics") / "state"
    running = start_backend(tiny_model_dir, state, FLYWHEEL_BACKEND__METRICS_TOKEN=SCRAPER)
    yield running
    stop_backend(running)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)] of a Prometheus text exposition."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def scrape(server: RunningBackend) -> dict[str, list[tuple[dict[str, str], float]]]:
    answer = httpx.get(f"{server.url}/metrics", headers=bearer(SCRAPER))
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def serve_one(server: RunningBackend) -> None:
    """A completion and its final outcome, and a trainer report, so every series has a value."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        context = {"prefix": "def add(a, b):\n    return "}
        body = http.post("/v1/complete", json={"context": context}, headers=server.client).raise_for_status()
        event = dict(
            event_id=uuid.uuid4().hex,
            completion_id=body.json()["completion_id"],
            kind="rejected",
            client_ts=1.0,
            visible_ms=900.0,
            final=True,
        )
        http.post("/v1/events", json={"events": [event]}, headers=server.client).raise_for_status()
        report = {
            "state": "training",
            "at": time.time(),
            "cycle": {"episodes": 7, "metrics": {"duration_s": 2.5}},
        }
        http.post("/v1/trainer/status", json=report, headers=server.admin).raise_for_status()


def stored_scraper(server: RunningBackend, how: str) -> str:
    """A metrics token made the way an admin would: over the API with the admin token, or by the
    command line on the backend's machine (its database, while it runs)."""
    if how == "api":
        body = {"name": "prometheus", "role": "metrics"}
        made = httpx.post(f"{server.url}/v1/admin/tokens", json=body, headers=server.admin)
        assert made.status_code == 200, made.text
        assert made.json()["role"] == "metrics"
        return str(made.json()["token"])
    out = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "token", "create", "--role", "metrics", "--name", "prom"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "(metrics, person" in out
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize("how", ["configured", "api", "cli"])
def test_the_metrics_role_scrapes_and_does_nothing_else(server: RunningBackend, how: str) -> None:
    token = SCRAPER if how == "configured" else stored_scraper(server, how)
    scraper = bearer(token)
    # A new stored token counts within a second (the backend reads its tokens again).
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/metrics", headers=scraper).status_code == 401:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "flywheel_completions_total" in httpx.get(f"{server.url}/metrics", headers=scraper).text
    refused = [
        ("POST", "/v1/complete"),
        ("POST", "/v1/events"),
        ("GET", "/v1/model"),
        ("GET", "/v1/episodes?cursor=0&limit=5"),
        ("GET", "/v1/checkpoints"),
        ("GET", "/admin/data.json"),
        ("POST", "/v1/admin/tokens"),
        ("POST", "/admin/act/pin/base"),
    ]
    for method, path in refused:
        answer = httpx.request(method, f"{server.url}{path}", json={}, headers=scraper)
        assert answer.status_code == 403, (method, path, answer.status_code)
    # No dashboard session for it: the login refuses it, and /admin sends it to the login page.
    login = httpx.post(f"{server.url}/admin/login", data={"token": token}, follow_redirects=False)
    assert login.status_code != 303 and "set-cookie" not in login.headers
    assert httpx.get(f"{server.url}/admin", headers=scraper, follow_redirects=False).status_code in (303, 307)
    # And the other way: a client token may not scrape; an admin still may.
    assert httpx.get(f"{server.url}/metrics", headers=server.client).status_code == 403
    assert httpx.get(f"{server.url}/metrics", headers=server.admin).status_code == 200
    if how != "configured":
        # A stored one is revoked like any other, and then scrapes no more.
        listed = httpx.get(f"{server.url}/v1/admin/tokens", headers=server.admin).json()
        (mine,) = [t for t in listed if t["person"] == person_of(hash_token(token))]
        assert mine["role"] == "metrics"
        revoke = httpx.post(f"{server.url}/v1/admin/tokens/{mine['id']}/revoke", headers=server.admin)
        assert revoke.status_code == 200
        assert httpx.get(f"{server.url}/metrics", headers=scraper).status_code == 401


async def test_a_metrics_token_alone_lets_nobody_use_the_backend(store: Store, tmp_path: Path) -> None:
    """Only a scraper's token stored: beyond loopback the backend still refuses to start, and on
    loopback it still makes the local admin and client tokens."""
    await store.add_token("prometheus", METRICS, hash_token(SCRAPER))
    settings = Settings(data_dir=tmp_path)
    settings.backend.host = "0.0.0.0"
    with pytest.raises(NoTokens):
        await ensure_tokens(store, settings)
    settings.backend.host = "127.0.0.1"
    assert len(await ensure_tokens(store, settings)) == 2


def test_the_figures_an_operator_watches(server: RunningBackend) -> None:
    before = scrape(server)
    serve_one(server)
    after = scrape(server)

    def total(found: dict, name: str) -> float:
        return sum(value for _, value in found.get(name, []))

    assert total(after, "flywheel_completions_total") == total(before, "flywheel_completions_total") + 1
    assert total(after, "flywheel_completion_latency_seconds_count") >= 1
    # The in-process engine knows its time to first token; it is under the whole latency.
    assert total(after, "flywheel_time_to_first_token_seconds_count") >= 1
    first = total(after, "flywheel_time_to_first_token_seconds_sum")
    assert 0 < first <= total(after, "flywheel_completion_latency_seconds_sum")
    assert dict((labels["result"], v) for labels, v in after["flywheel_events_total"])["stored"] >= 1
    assert total(after, "flywheel_batches_total") >= 1
    assert after["flywheel_completions_in_flight"] == [({}, 0.0)]
    assert after["flywheel_queue_depth"] == [({}, 0.0)]
    trainer = {labels["state"]: v for labels, v in after["flywheel_trainer_state"]}
    assert trainer["training"] == 1 and sum(trainer.values()) == 1
    assert after["flywheel_trainer_cycle_episodes"] == [({}, 7.0)]
    assert after["flywheel_trainer_cycle_seconds"] == [({}, 2.5)]
    assert {labels["version"]: v for labels, v in after["flywheel_serving"]} == {"base": 1.0}
    assert after["flywheel_canary_share"] == [({}, 0.0)]
    assert {labels["state"]: v for labels, v in after["flywheel_checkpoints"]}["live"] == 0


def dashboard_metrics() -> set[str]:
    """The metric names in every expression of the dashboard's panels."""
    names: set[str] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            found = set(re.findall(r"\bflywheel_[a-z0-9_]+", target["expr"]))
            assert found, (panel["title"], target["expr"])
            names |= found
    return names


def test_every_metric_the_dashboard_queries_exists(server: RunningBackend) -> None:
    serve_one(server)
    deadline = time.monotonic() + 30
    # The passes' last success appears once each has run (the finalizer runs every 0.2 s here).
    while "flywheel_pass_last_success_timestamp_seconds" not in (found := scrape(server)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    missing = dashboard_metrics() - set(found)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {sorted(missing)}"


def test_a_trainer_report_without_figures_still_scrapes(server: RunningBackend) -> None:
    # The cycle is free-form JSON an admin token posts (found by the fuzzer: a 500 on /metrics).
    cycles = ({"metrics": []}, {"episodes": "seven", "metrics": {"duration_s": None}}, {"episodes": True})
    for cycle in cycles:
        report = {"state": "idle", "at": time.time(), "cycle": cycle}
        httpx.post(f"{server.url}/v1/trainer/status", json=report, headers=server.admin).raise_for_status()
        found = scrape(server)
        assert not {"flywheel_trainer_cycle_episodes", "flywheel_trainer_cycle_seconds"} & set(found)
        assert {labels["state"]: v for labels, v in found["flywheel_trainer_state"]}["idle"] == 1
