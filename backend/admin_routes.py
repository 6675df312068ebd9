"""Admin routes: the dashboard (login by admin token), its actions, the admin JSON API and /metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import plotly
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from backend import dashboard
from backend.auth import ADMIN, COOKIE
from backend.deps import State, admin_only, bearer
from backend.lifecycle import PINNED, LifecycleError
from backend.wire import API_PREFIX, SIMULATION_PATH, SimulationReport

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
ACTIONS = ("promote", "rollback", "pin", "unpin")
# The store's key for the latest SimulationReport (one simulation's figures at a time).
SIMULATION = "simulation_report"


async def dashboard_data(state: Any) -> dict[str, Any]:
    """Everything the dashboard shows, as plain data (also served as /admin/data.json)."""
    store = state.store
    now = time.time()
    first = await store.series(0.0, 10**9)
    start = min((row["at"] for row in first), default=now)
    span = max(now - max(start, now - 7 * 86400), 60.0)
    bucket = max(10.0, round(span / 40))
    latencies = await store.latencies(now - 3600)
    policy = state.worker.policy
    return {
        "base_model": state.base_model,
        "live": policy.live,
        "canary": policy.canary,
        "canary_share": policy.canary_share if policy.canary else 0.0,
        "pinned": await store.get_setting(PINNED),
        "canary_verdict": state.lifecycle.last_verdict,
        "trainer": await store.get_setting("trainer_status"),
        "simulation": await store.get_setting(SIMULATION),
        "stats": await store.stats(),
        "series": await store.series(now - span, bucket),
        "reward_histogram": await store.reward_histogram(now - span),
        "events_per_minute": await store.events_per_minute(now - span),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "checkpoints": await store.checkpoints(),
        "transitions": await store.transitions(),
    }


async def act(state: Any, action: str, version: str) -> dict[str, Any]:
    lifecycle = state.lifecycle
    try:
        if action == "promote":
            await lifecycle.promote(version, "promoted by admin")
        elif action == "rollback":
            await lifecycle.roll_back(version, "rolled back by admin")
        elif action == "pin":
            await lifecycle.pin(version)
        elif action == "unpin":
            await lifecycle.pin(None)
        else:
            raise HTTPException(status_code=404, detail=f"unknown action {action!r}; one of {ACTIONS}")
    except LifecycleError as error:
        raise HTTPException(status_code=409, detail=str(error)) from error
    return {"live": lifecycle.worker.policy.live, "canary": lifecycle.worker.policy.canary}


def add_routes(app: FastAPI) -> None:
    async def is_admin(request: Request, state: Any) -> bool:
        return await state.auth.allows(bearer(request), ADMIN)

    @app.get("/admin", response_class=HTMLResponse, response_model=None)
    async def admin_page(request: Request, state: State) -> HTMLResponse | RedirectResponse:
        if not await is_admin(request, state):
            return RedirectResponse("/admin/login", status_code=303)
        return HTMLResponse(dashboard.render(await dashboard_data(state)))

    @app.get("/admin/login", response_class=HTMLResponse)
    async def login_form() -> str:
        return dashboard.login_page()

    @app.post("/admin/login", response_model=None)
    async def login(state: State, token: Annotated[str, Form()] = "") -> HTMLResponse | RedirectResponse:
        if await state.auth.role_of(token) != ADMIN:
            return HTMLResponse(dashboard.login_page("not an admin token"), status_code=401)
        response = RedirectResponse("/admin", status_code=303)
        # SameSite=Strict: the dashboard's forms are not reachable from another site's page.
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.get("/admin/logout")
    async def logout() -> RedirectResponse:
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/admin/static/plotly.min.js")
    async def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="application/javascript")

    @app.get("/admin/data.json", dependencies=admin_only)
    async def data(state: State) -> dict[str, Any]:
        return await dashboard_data(state)

    @app.post("/admin/act/{action}/{version}", dependencies=admin_only)
    async def act_from_dashboard(action: str, version: str, state: State) -> RedirectResponse:
        await act(state, action, version)
        return RedirectResponse("/admin", status_code=303)

    @app.post(f"{API_PREFIX}/admin/checkpoints/{{version}}/{{action}}", dependencies=admin_only)
    async def act_by_api(version: str, action: str, state: State) -> dict[str, Any]:
        return await act(state, action, version)

    @app.post(SIMULATION_PATH, dependencies=admin_only)
    async def record_simulation(report: SimulationReport, state: State) -> dict[str, str]:
        await state.store.set_setting(SIMULATION, report.model_dump())
        return {"status": "recorded"}

    @app.get(SIMULATION_PATH, dependencies=admin_only)
    async def latest_simulation(state: State) -> SimulationReport:
        stored = await state.store.get_setting(SIMULATION)
        if stored is None:
            raise HTTPException(status_code=404, detail="no simulation has reported")
        return SimulationReport.model_validate(stored)

    @app.get("/metrics", dependencies=admin_only)
    async def metrics(state: State) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
