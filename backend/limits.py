"""Request size limits, enforced on the raw ASGI stream so an oversized body is never buffered."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Everything but a checkpoint upload: a full events batch of 1,000 events fits with room to spare.
DEFAULT_LIMIT = 32 * 1024 * 1024
# What anyone may send without a token (the dashboard's login and logout forms).
PUBLIC_LIMIT = 16 * 1024
PUBLIC_PATHS = ("/admin/login", "/admin/logout")


class TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, upload_bytes: int, default_bytes: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.default_bytes = default_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        if path.endswith("/checkpoints"):
            limit = self.upload_bytes
        elif path in PUBLIC_PATHS:
            limit = PUBLIC_LIMIT
        else:
            limit = self.default_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    body: Any = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
