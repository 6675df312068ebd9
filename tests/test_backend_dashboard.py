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
            asyncio.run(drive(server.url, 24, lambda v: 0.6, headers={"authorization": f"Bearer {client}"}))
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
