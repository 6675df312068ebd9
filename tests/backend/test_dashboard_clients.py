"""The dashboard's figures per client kind and language, its date range and auto-refresh, in a real
browser (Debian's chromium driven by Playwright), after traffic from Flywheel's own protocol, Tabby's
and OpenAI's on a real backend (tiny model).

FLYWHEEL_SCREENSHOTS=DIR keeps the page's screenshot as DIR/dashboard.png (the README's is
docs/screenshots/dashboard.png, taken so)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_traffic import drive
from conftest import RunningBackend, start_backend, stop_backend

from core.local_tokens import ADMIN, read_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
PREFIX = "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        data = "

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)"
    ),
    pytest.mark.timeout(180, func_only=True),
]


def tabby_round(backend: RunningBackend, n: int, accept: bool) -> bool:
    """One Tabby completion and, when shown, its view and select or dismiss; True when shown."""
    body = {"language": "python", "segments": {"prefix": PREFIX + "x" * n, "suffix": "\n"}}
    answer = httpx.post(f"{backend.url}/v1/completions", json=body, headers=backend.client, timeout=60).json()
    if not answer["choices"]:
        return False
    for kind in ("view", "select" if accept else "dismiss"):
        event = {"type": kind, "completion_id": answer["id"], "choice_index": 0, "elapsed": 2000}
        httpx.post(
            f"{backend.url}/v1/events", json=event, headers=backend.client, timeout=10
        ).raise_for_status()
    return True


def openai_round(backend: RunningBackend, n: int) -> None:
    body = {"model": "flywheel", "prompt": PREFIX + "y" * n, "suffix": "\n"}
    httpx.post(
        f"{backend.url}/v1/completions", json=body, headers=backend.client, timeout=60
    ).raise_for_status()


def lsp_in_rust(backend: RunningBackend) -> None:
    """A language-server completion in another language: the per-language table's second row."""
    body = {"context": {"prefix": "fn main() {\n    let x = ", "path": "main.rs", "language": "rust"}}
    answer = httpx.post(f"{backend.url}/v1/complete", json=body, headers=backend.client, timeout=60).json()
    if answer["text"]:
        event = {"event_id": uuid.uuid4().hex, "completion_id": answer["completion_id"], "client_ts": 1.0}
        events = [
            dict(event, kind="shown"),
            dict(event, event_id=uuid.uuid4().hex, kind="rejected", final=True),
        ]
        httpx.post(f"{backend.url}/v1/events", json={"events": events}, headers=backend.client, timeout=10)


def cells(page: Any, row_id: str) -> dict[str, str]:
    row = page.locator(f"#{row_id}")
    return {name: row.locator(f"td.{name}").inner_text() for name in ("served", "accept_rate", "arc_per_100")}


def test_each_client_kind_and_language_on_the_dashboard(tiny_model_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    backend = start_backend(tiny_model_dir, tmp_path / "state")
    try:
        asyncio.run(drive(backend.url, 8, lambda v: 0.5, [backend.client]))
        lsp_in_rust(backend)
        shown = [tabby_round(backend, n, accept=n % 2 == 0) for n in range(8)]
        for n in range(3):
            openai_round(backend, n)
        admin = backend.admin
        # The finalizer runs every 0.2 s here: the final events' episodes close at once.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            data = httpx.get(f"{backend.url}/admin/data.json", headers=admin, timeout=30).json()
            clients = {row["client"]: row for row in data["clients"]}
            if clients.get("tabby", {}).get("rated", 0) >= sum(shown):
                break
            time.sleep(0.2)
        assert set(clients) == {"lsp", "tabby", "openai"}
        assert (clients["lsp"]["served"], clients["tabby"]["served"], clients["openai"]["served"]) == (
            9,
            8,
            3,
        )
        assert clients["tabby"]["rated"] == sum(shown) and clients["openai"]["rated"] == 0
        languages = {row["language"]: row["served"] for row in data["languages"]}
        assert languages == {"python": 16, "rust": 1, "": 3}

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{backend.url}/admin/login")
            page.fill("#token", read_token(backend.data_dir, ADMIN))
            page.click("#login")
            page.wait_for_selector("#chart-clients .main-svg")
            tabby = clients["tabby"]
            assert cells(page, "client-tabby") == {
                "served": "8",
                "accept_rate": f"{tabby['accept_rate']:.1%}" if tabby["accept_rate"] is not None else "–",
                "arc_per_100": f"{tabby['arc_per_100']:.1f}" if tabby["arc_per_100"] is not None else "–",
            }
            assert cells(page, "client-openai")["accept_rate"] == "–"
            assert cells(page, "language-python")["served"] == "16"
            assert cells(page, "language-unknown")["served"] == "3"
            assert "the last 7 days" in page.inner_text("#range-text")
            if directory := os.environ.get("FLYWHEEL_SCREENSHOTS"):
                Path(directory).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(directory) / "dashboard.png"), full_page=True)

            # A range of days before anything was served: no client, no language.
            page.fill("#since", "2020-01-01")
            page.fill("#until", "2020-01-31")
            page.select_option("#refresh", "10")
            page.click("#apply-range")
            page.wait_for_selector("#client")
            assert "since=2020-01-01" in page.url and "refresh=10" in page.url
            assert "nothing served in this range" in page.inner_text("#client")
            assert page.locator("#client-tabby").count() == 0
            assert page.input_value("#since") == "2020-01-01" and page.input_value("#until") == "2020-01-31"
            # Auto-refresh: the page reloads itself, the range kept in its address.
            assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "10"
            browser.close()

        stale = httpx.get(
            f"{backend.url}/admin/data.json", params={"since": "2020-01-01"}, headers=admin, timeout=30
        ).json()
        assert sum(row["served"] for row in stale["clients"]) == 20
        bad = httpx.get(
            f"{backend.url}/admin/data.json", params={"since": "2020-13-01"}, headers=admin, timeout=30
        )
        assert bad.status_code == 422
    finally:
        stop_backend(backend)
