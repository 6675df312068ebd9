"""The admin dashboard in a real browser: Debian's chromium driven by Playwright (never downloaded)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from backend_traffic import drive, upload
from conftest import backend_env, free_port, make_adapter, start_backend, stop_backend

from simulate.report import CycleRow, simulation_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path("/tmp/flywheel-dashboard.png")


def create_token(model_dir: Path, data_dir: Path, *args: str) -> str:
    env = backend_env(model_dir, data_dir, free_port())
    out = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "token", "create", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
def test_admin_logs_in_sees_charts_and_rolls_back_by_clicking(tiny_model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data_dir = tmp_path / "state"
    admin = create_token(tiny_model_dir, data_dir, "--admin", "--name", "ops")
    client = create_token(tiny_model_dir, data_dir, "--name", "editors")
    server = start_backend(tiny_model_dir, data_dir, FLYWHEEL_CANARY__SHARE="0")
    try:
        auth = {"authorization": f"Bearer {admin}"}
        for seed in (1, 2):
            adapter = make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed, scale=0.02)
            assert upload(server.url, adapter, str(tiny_model_dir), **auth).status_code == 200
            asyncio.run(drive(server.url, 24, lambda v: 0.6, [{"authorization": f"Bearer {client}"}]))
        httpx.post(
            f"{server.url}/v1/trainer/status",
            json={"state": "training", "at": 1.7e9, "message": "cycle 3: 24 episodes"},
            headers=auth,
        ).raise_for_status()

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/admin")
            assert page.url.endswith("/admin/login")
            page.fill("#token", client)  # a client token is not enough
            page.click("#login")
            assert "not an admin token" in page.content()
            page.fill("#token", admin)
            page.click("#login")
            page.wait_for_selector("#chart-accept-rate .main-svg")
            # The browser holds a session id, never the token.
            [cookie] = page.context.cookies()
            assert cookie["httpOnly"] and admin not in cookie["value"]

            assert page.inner_text("#live-version .v") == "v2"
            assert int(page.inner_text("#stat-served .v")) >= 48
            assert "cycle 3: 24 episodes" in page.inner_text("#trainer-status")
            for chart in ("accept-rate", "arc", "reward", "reward-histogram", "shown", "events"):
                points = page.evaluate(
                    f"document.getElementById('chart-{chart}').data.reduce((n, t) => n + t.y.length, 0)"
                )
                assert points > 0, f"chart {chart} has no data"
            # One line per version that served traffic.
            names = page.evaluate("document.getElementById('chart-reward').data.map(t => t.name)")
            assert {"v1", "v2"} <= set(names)
            # No simulation has reported: no section for it.
            assert page.query_selector("#simulation") is None
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)

            page.click("#rollback-v2")
            page.wait_for_selector("#checkpoint-v2 .rolled_back")
            assert page.inner_text("#live-version .v") == "v1"
            assert "rolled back by admin" in page.inner_text("#checkpoint-v2")
            browser.close()
        assert httpx.get(f"{server.url}/healthz").json()["live_version"] == "v1"
    finally:
        stop_backend(server)


def three_cycles() -> dict:
    rows = [
        CycleRow(0, "base", requests=40, shown=30, shown_rate=0.75, accept_rate=0.2, arc_per_100=8.0,
                 mean_reward=0.05, heldout_ppl=60.5),
        CycleRow(1, "v1", requests=42, shown=33, shown_rate=0.79, accept_rate=0.3, arc_per_100=11.0,
                 mean_reward=0.12, heldout_ppl=55.1, train_episodes=50, trained_on=40, candidate="v1",
                 candidate_state="live", dropped="inhuman_user=10", trainer_s=12.5),
        # A round where nothing shown was rated: no accept rate, and no point drawn for it.
        CycleRow(2, "v2", requests=41, shown=0, shown_rate=0.0, candidate="v2", candidate_state="live"),
    ]  # fmt: skip
    report = simulation_report(
        rows,
        run_id="run-abc",
        started_at=1.7e9,
        updated_at=1.7e9 + 600,
        corpus="/src/corpus",
        planned_cycles=2,
        settings={"developers": 4, "adversarial share": 0.25},
    )
    return report.model_dump(mode="json")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
def test_simulation_figures_reach_the_dashboard(tiny_model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data_dir = tmp_path / "state"
    admin = create_token(tiny_model_dir, data_dir, "--admin", "--name", "ops")
    client = create_token(tiny_model_dir, data_dir, "--name", "editors")
    server = start_backend(tiny_model_dir, data_dir)
    try:
        url = f"{server.url}/v1/simulation"
        report = three_cycles()
        as_admin = {"authorization": f"Bearer {admin}"}
        assert httpx.get(url, headers=as_admin).status_code == 404  # nothing reported yet
        assert httpx.post(url, json=report).status_code == 401
        assert httpx.post(url, json=report, headers={"authorization": f"Bearer {client}"}).status_code == 403
        malformed = {**report, "cycles": [{**report["cycles"][0], "accept_rate": 1.5}]}
        assert httpx.post(url, json=malformed, headers=as_admin).status_code == 422
        assert httpx.post(url, json={"run_id": "x"}, headers=as_admin).status_code == 422
        assert httpx.post(url, json=report, headers=as_admin).status_code == 200
        assert httpx.get(url, headers=as_admin).json() == report
        assert httpx.get(url).status_code == 401
        assert httpx.get(f"{server.url}/admin/data.json", headers=as_admin).json()["simulation"] == report

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/admin/login")
            page.fill("#token", admin)
            page.click("#login")
            page.wait_for_selector("#sim-accept .main-svg")

            assert "run run-abc" in page.inner_text("#sim-summary")
            assert "cycle 2 of 2" in page.inner_text("#sim-summary")
            assert page.locator("#sim-cycles tbody tr").count() == 3
            cells = page.locator("#sim-cycle-1 td").all_inner_texts()
            assert cells[:8] == ["1", "v1", "42", "79.0%", "30.0%", "11.0", "0.120", "55.10"]
            assert "inhuman_user=10" in cells
            for chart, points in {"accept": 2, "arc": 2, "shown": 3, "reward": 2, "ppl": 2}.items():
                drawn = page.evaluate(f"document.getElementById('sim-{chart}').data[0].y.length")
                assert drawn == points, chart
            assert page.evaluate("document.getElementById('sim-accept').data[0].y") == [0.2, 0.3]
            browser.close()
    finally:
        stop_backend(server)


def test_the_timeline_shows_each_versions_confidence_floors() -> None:
    from backend.dashboard import timeline
    from core.wire import CheckpointInfo

    metrics = {"min_confidence_line_start": -4.0, "min_confidence_after_symbol": -3.5, "floors_only": 1.0}
    floors_only = CheckpointInfo(
        version="v3", state="live", parent_version="v1", created_at=0, metrics=metrics
    )
    update = CheckpointInfo(version="v2", state="rejected", parent_version="v1", created_at=0, metrics={})
    html = timeline([update, floors_only], [], None, "csrf")
    assert "floors only: {line_start: -4, after_symbol: -3.5}" in html
    assert html.count("floors") == 1
