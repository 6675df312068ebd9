"""The door: every request is checked here, before any route runs or any body is read.

1. `Host` must name this backend (loopback names by default, `backend.allowed_hosts` for more):
   a DNS-rebinding page, whose requests carry its own name, is refused.
2. A state-changing request a browser sends from another origin (its `Origin` differs from the
   `Host` it was sent to, or `Sec-Fetch-Site` says cross-site) is refused: no web page open in the
   user's browser can promote, roll back, pin or upload.
3. The caller is identified: a bearer token, or on the dashboard's pages its session cookie. A
   request that needs a role its caller lacks gets 401 or 403 without its body being read, so a
   stranger cannot make the backend spool a 600 MB upload.

The caller (`backend.auth.Principal`) and the dashboard session go into the request's state for
the routes (backend/deps.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.auth import ADMIN, CLIENT, METRICS
from backend.sessions import COOKIE

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Reachable with no token: the health checks, the login page and what it needs. GET /admin answers
# anyone too: it redirects a caller without a session to the login page.
PUBLIC = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/admin"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/logout"),
        ("GET", "/admin/static/plotly.min.js"),
    }
)
# What an editor's client token may do; everything else needs an admin token.
CLIENT_ROUTES = frozenset(
    {
        ("POST", "/v1/complete"),
        ("POST", "/v1/events"),
        ("GET", "/v1/model"),
        ("GET", "/v1/checkpoints"),
        # Other clients' protocols (backend/compat_routes.py): Tabby's and OpenAI's completions,
        # Tabby's health check and server settings, OpenAI's model list.
        ("POST", "/v1/completions"),
        ("GET", "/v1/health"),
        ("POST", "/v1/health"),
        ("GET", "/v1beta/server_setting"),
        ("GET", "/v1/models"),
    }
)


# What a metrics token may do (an admin may too).
METRICS_ROUTES = frozenset({("GET", "/metrics")})


def needed_role(method: str, path: str) -> str | None:
    """The role a request needs; None for the public routes."""
    key = ("GET" if method == "HEAD" else method, path.rstrip("/") or "/")
    if key in PUBLIC:
        return None
    if key in METRICS_ROUTES:
        return METRICS
    return CLIENT if key in CLIENT_ROUTES else ADMIN


def host_name(netloc: str) -> str:
    """The host of a `Host` header or URL authority, without port or IPv6 brackets, lowercased; ""
    for one that is none (an unclosed IPv6 bracket made urlsplit raise: a 500 for anyone)."""
    try:
        hostname = urlsplit("//" + netloc).hostname
    except ValueError:
        return ""
    return (hostname or "").lower()


def allowed_hosts(configured: Iterable[str], bind_host: str) -> frozenset[str]:
    names = {name.lower() for name in configured} or set(LOOPBACK_NAMES)
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(host_name(bind_host) or bind_host.lower())
    return frozenset(names)


class AccessControl:
    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if "*" not in self.hosts and host_name(host) not in self.hosts:
            await _refuse(send, 400, f"host {host!r} is not one this backend answers to")
            return
        method, path = scope["method"], scope["path"]
        if method not in SAFE_METHODS and _cross_site(headers, host):
            await _refuse(send, 403, "cross-origin request refused")
            return
        backend = scope["app"].state.backend
        principal = session = None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            principal = await backend.auth.identify(token.strip())
        elif path == "/admin" or path.startswith("/admin/"):
            # The cookie counts on the dashboard's own pages only: the API takes bearer tokens,
            # so a browser's ambient cookie can never act through it.
            session = backend.sessions.get(cookie_parser(headers.get("cookie", "")).get(COOKIE))
            if session is not None:
                principal = await backend.auth.by_hash(session.token_hash)
        state = scope.setdefault("state", {})
        state["principal"], state["session"] = principal, session if principal else None
        needed = needed_role(method, path)
        if needed is not None and principal is None:
            await _refuse(send, 401, f"missing or wrong bearer token ({needed} needed)")
        elif needed is not None and principal is not None and not principal.may(needed):
            await _refuse(send, 403, f"this token may not do that ({needed} needed)")
        else:
            await self.app(scope, receive, send)


def _cross_site(headers: Headers, host: str) -> bool:
    if headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False  # not sent by a browser: such a caller still needs a token
    try:
        return urlsplit(origin).netloc.lower() != host.lower()
    except ValueError:
        return True  # an Origin that is no URL is no page of this backend's


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    # Close: the body the client may still be sending is never read.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
