"""FastAPI dependencies shared by the API and the admin routes: the backend's state and the caller.

backend/access.py has already identified the caller and refused those without the role a route
needs; `requires` checks again at the route, so a route added without a line in access.py's
tables is still guarded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from backend.auth import ADMIN, CLIENT, METRICS, Principal
from backend.sessions import Session
from backend.state import BackendState


def get_state(request: Request) -> BackendState:
    return request.app.state.backend


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def session_of(request: Request) -> Session | None:
    return getattr(request.state, "session", None)


def requires(role: str) -> Callable[..., Awaitable[None]]:
    async def check(request: Request) -> None:
        principal = principal_of(request)
        if principal is None:
            raise HTTPException(status_code=401, detail=f"missing or wrong bearer token ({role} needed)")
        if not principal.may(role):
            raise HTTPException(status_code=403, detail=f"this token may not do that ({role} needed)")

    return check


async def _state(request: Request) -> BackendState:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hand-off on every request.
    return get_state(request)


async def _caller(request: Request) -> Principal:
    principal = principal_of(request)
    if principal is None:
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")
    return principal


State = Annotated[BackendState, Depends(_state)]
Caller = Annotated[Principal, Depends(_caller)]
client_only = [Depends(requires(CLIENT))]
admin_only = [Depends(requires(ADMIN))]
metrics_readers = [Depends(requires(METRICS))]
