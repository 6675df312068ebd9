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


State = Annotated[Any, Depends(get_state)]
client_only = [Depends(requires(CLIENT))]
admin_only = [Depends(requires(ADMIN))]
