"""FastAPI dependencies shared by the API and the admin routes: the backend's state and access checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request

from backend.auth import ADMIN, CLIENT, COOKIE

if TYPE_CHECKING:
    from backend.app import BackendState


def get_state(request: Request) -> BackendState:
    return request.app.state.backend


def bearer(request: Request) -> str | None:
    """The bearer token, or the dashboard's login cookie."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    return request.cookies.get(COOKIE)


def requires(role: str) -> Callable[..., Awaitable[None]]:
    async def check(request: Request) -> None:
        if not await get_state(request).auth.allows(bearer(request), role):
            raise HTTPException(status_code=401, detail=f"missing or wrong bearer token ({role} needed)")

    return check


async def _state(request: Request) -> BackendState:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hand-off on every request.
    return get_state(request)


State = Annotated[Any, Depends(_state)]
client_only = [Depends(requires(CLIENT))]
admin_only = [Depends(requires(ADMIN))]
