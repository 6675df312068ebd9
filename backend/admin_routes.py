"""Admin routes: the dashboard (login by admin token), its actions, the admin JSON API and /metrics."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import plotly
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response

from backend import dashboard, dashboard_clients
from backend.auth import ADMIN, hash_token, new_token, person_of
from backend.deps import State, admin_only, metrics_readers, principal_of, session_of
from backend.lifecycle import PINNED, LifecycleError
from backend.sessions import COOKIE, LIFETIME_S
from backend.state import BackendState
from backend.store import TokenRecord
from core.wire import (
    API_PREFIX,
    SIMULATION_PATH,
    TOKENS_PATH,
    NewToken,
    SimulationReport,
    TokenInfo,
    TokenRequest,
)

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
ACTIONS = ("promote", "rollback", "pin", "unpin")
# The store's key for the latest SimulationReport (one simulation's figures at a time).
SIMULATION = "simulation_report"


async def dashboard_data(
    state: BackendState, since: float | None = None, until: float | None = None, refresh_s: int = 0
) -> dict[str, Any]:
    """Everything the dashboard shows, as plain data (also served as /admin/data.json). The charts
    and the tables per client kind and language cover [since, until) by serving time (default: the
    last 7 days, from the first completion when that is later); the cards are all time."""
    store = state.store
    now = time.time()
    end = now if until is None else until
    if since is None:
        first = await store.series(0.0, 10**9, until)
        since = max(min((row["at"] for row in first), default=end), end - 7 * 86400)
        asked = None
    else:
        asked = since
    span = max(end - since, 60.0)
    bucket = max(10.0, round(span / 40))
    latencies = await store.latencies(now - 3600)
    slices = await store.breakdown(end - span, until)
    policy = state.completions.policy
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
        "series": await store.series(end - span, bucket, until),
        "reward_histogram": await store.reward_histogram(end - span, until=until),
        "events_per_minute": await store.events_per_minute(end - span, until),
        # Per client kind (lsp, tabby, openai) and per language, over the range (dashboard_clients.py).
        "clients": dashboard_clients.summarize(slices, "client"),
        "languages": dashboard_clients.summarize(slices, "language"),
        "range": dashboard_clients.describe(asked, until, refresh_s),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "checkpoints": await store.checkpoints(),
        "transitions": await store.transitions(),
        # The loop's health: passes failing in a row, rows set aside (passes.py, store/sqlite/quarantine.py).
        "passes": state.passes.report(),
        "quarantine": {"counts": await store.quarantine_counts(), "latest": await store.quarantined(10)},
    }


async def act(state: BackendState, action: str, version: str) -> dict[str, Any]:
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
    return {"live": lifecycle.completions.policy.live, "canary": lifecycle.completions.policy.canary}


# The dashboard's and the admin API's routes; create_app includes them.
router = APIRouter()


def is_admin(request: Request) -> bool:
    principal = principal_of(request)
    return principal is not None and principal.role == ADMIN


# The dashboard's range, whole local days (the form's date inputs; empty: open), and auto-refresh.
Day = Annotated[str, Query(max_length=10, pattern=r"^(\d{4}-\d{2}-\d{2})?$")]
Refresh = Annotated[int, Query(ge=0, le=3600)]


def _days(since: str, until: str) -> tuple[float | None, float | None]:
    try:
        first, last = (date.fromisoformat(day) if day else None for day in (since, until))
    except ValueError as error:
        raise RequestValidationError(
            [{"type": "date_parsing", "loc": ("query", "since/until"), "msg": str(error)}]
        ) from None
    return dashboard_clients.day_range(first, last)


@router.get("/admin", response_class=HTMLResponse, response_model=None)
async def admin_page(
    request: Request, state: State, since: Day = "", until: Day = "", refresh: Refresh = 0
) -> HTMLResponse | RedirectResponse:
    session = session_of(request)
    if not is_admin(request) or session is None:
        return RedirectResponse("/admin/login", status_code=303)
    data = await dashboard_data(state, *_days(since, until), refresh)
    return HTMLResponse(dashboard.render(data, session.csrf))


@router.get("/admin/login", response_class=HTMLResponse)
async def login_form() -> str:
    return dashboard.login_page()


# The schema says what each route really answers (its status and content type): the fuzzing
# in tests/backend/test_fuzz.py holds the answers to it.
@router.post("/admin/login", response_model=None, status_code=303, response_class=RedirectResponse)
async def login(
    request: Request, state: State, token: Annotated[str, Form(max_length=512)] = ""
) -> HTMLResponse | RedirectResponse:
    principal = await state.auth.identify(token.strip())
    if principal is None or principal.role != ADMIN:
        return HTMLResponse(dashboard.login_page("not an admin token"), status_code=401)
    session_id, _ = state.sessions.open(principal.token_hash)
    response = RedirectResponse("/admin", status_code=303)
    # The cookie holds a session id, never the token. SameSite=Strict: no other site's page
    # sends it; Secure when served over TLS (directly or behind a proxy that says so).
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=int(LIFETIME_S),
    )
    return response


@router.post("/admin/logout", status_code=303, response_class=RedirectResponse)
async def logout(
    request: Request, state: State, csrf: Annotated[str, Form(max_length=512)] = ""
) -> RedirectResponse:
    # A forged form cannot log the admin out either.
    session = session_of(request)
    if session is not None and not session.csrf_matches(csrf):
        return RedirectResponse("/admin", status_code=303)
    state.sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get(
    "/admin/static/plotly.min.js",
    response_class=FileResponse,
    responses={200: {"content": {"application/javascript": {}}}},
)
async def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="application/javascript")


@router.get("/admin/data.json", dependencies=admin_only)
async def data(state: State, since: Day = "", until: Day = "") -> dict[str, Any]:
    return await dashboard_data(state, *_days(since, until))


@router.post(
    "/admin/act/{action}/{version}",
    dependencies=admin_only,
    status_code=303,
    response_class=RedirectResponse,
)
async def act_from_dashboard(
    action: str, version: str, request: Request, state: State, csrf: Annotated[str, Form()] = ""
) -> RedirectResponse:
    # A dashboard form carries its session's CSRF token; a bearer token needs none (no
    # browser sends one on its own).
    session = session_of(request)
    if session is not None and not session.csrf_matches(csrf):
        raise HTTPException(status_code=403, detail="missing or stale CSRF token; reload the dashboard")
    await act(state, action, version)
    return RedirectResponse("/admin", status_code=303)


@router.post(f"{API_PREFIX}/admin/checkpoints/{{version}}/{{action}}", dependencies=admin_only)
async def act_by_api(version: str, action: str, state: State) -> dict[str, Any]:
    return await act(state, action, version)


@router.post(SIMULATION_PATH, dependencies=admin_only)
async def record_simulation(report: SimulationReport, state: State) -> dict[str, str]:
    await state.store.set_setting(SIMULATION, report.model_dump())
    return {"status": "recorded"}


@router.get(SIMULATION_PATH, dependencies=admin_only)
async def latest_simulation(state: State) -> SimulationReport:
    stored = await state.store.get_setting(SIMULATION)
    if stored is None:
        raise HTTPException(status_code=404, detail="no simulation has reported")
    return SimulationReport.model_validate(stored)


@router.post(TOKENS_PATH, dependencies=admin_only)
async def create_token(body: TokenRequest, state: State) -> NewToken:
    token = new_token()
    token_hash = hash_token(token)
    token_id = await state.store.add_token(body.name, body.role, token_hash)
    state.auth.reload()
    info = next(t for t in await state.store.tokens() if t["id"] == token_id)
    return NewToken(**_token_info(info).model_dump(), token=token)


@router.get(TOKENS_PATH, dependencies=admin_only)
async def list_tokens(state: State) -> list[TokenInfo]:
    return [_token_info(t) for t in await state.store.tokens(include_revoked=True)]


@router.post(f"{TOKENS_PATH}/{{token_id}}/revoke", dependencies=admin_only)
async def revoke_token(
    # SQLite's integers end at 2**63 - 1: a larger id was a 500 (tests/backend/test_fuzz.py).
    token_id: Annotated[int, InPath(ge=1, le=2**63 - 1)],
    state: State,
) -> dict[str, str]:
    if not await state.store.revoke_token(token_id):
        raise HTTPException(status_code=404, detail=f"no active token with id {token_id}")
    state.auth.reload()
    return {"status": "revoked"}


@router.get("/metrics", dependencies=metrics_readers, response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    return Response(await state.metrics.scrape(state.store), media_type="text/plain; version=0.0.4")


def _token_info(row: TokenRecord) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        person=person_of(row["hash"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
