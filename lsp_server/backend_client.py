"""HTTP calls to the backend (`core.wire` is the contract).

The HTTP client and the wire models (pydantic) are imported on first use, never while the editor
waits for `initialize`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.wire import CompleteRequest, CompleteResponse, ModelInfo
    from lsp_server.http11 import Http11Client

logger = logging.getLogger(__name__)


# The backend refused the credentials: a wrong or missing token, not an outage.
AUTH_STATUSES = frozenset({401, 403})


class BackendError(Exception):
    """The backend could not be reached, or did not answer as the contract says."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        # The HTTP status when the backend answered with an error; None for transport failures.
        self.status = status

    @property
    def unauthorized(self) -> bool:
        return self.status in AUTH_STATUSES


class BackendClient:
    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._http: Http11Client | None = None

    def _client(self) -> Http11Client:
        if self._http is None:
            from lsp_server.http11 import Http11Client

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                self._http = Http11Client(self.base_url, headers)
            except ValueError as exc:
                raise BackendError(str(exc)) from exc
        return self._http

    async def complete(self, request: CompleteRequest) -> CompleteResponse:
        from core.wire import API_PREFIX, CompleteResponse

        body = await self._post(f"{API_PREFIX}/complete", request.model_dump(mode="json"))
        try:
            return CompleteResponse.model_validate(body)
        except ValueError as exc:
            raise BackendError(f"unexpected completion answer: {exc}") from exc

    async def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        from core.wire import API_PREFIX, EventsRequest, EventsResponse

        body = await self._post(f"{API_PREFIX}/events", EventsRequest(events=events).model_dump(mode="json"))
        try:
            return EventsResponse.model_validate(body).model_dump()
        except ValueError as exc:
            raise BackendError(f"unexpected events answer: {exc}") from exc

    async def model_info(self) -> ModelInfo:
        """`GET /v1/model` with the token: the live version and the languages served. A client route,
        so a wrong token shows here as a 401 (where `/healthz` would answer anyone)."""
        from core.wire import API_PREFIX, ModelInfo

        body = await self._send("GET", f"{API_PREFIX}/model", None)
        try:
            return ModelInfo.model_validate(body)
        except ValueError as exc:
            raise BackendError(f"unexpected model answer: {exc}") from exc

    async def health(self) -> dict[str, Any]:
        """`GET /healthz`: the live and canary versions, when the backend is up."""
        body = await self._send("GET", "/healthz", None)
        if not isinstance(body, dict):
            raise BackendError("unexpected health answer")
        return body

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        return await self._send("POST", path, payload)

    async def _send(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        import h11

        from lsp_server.http11 import TransportError

        try:
            async with asyncio.timeout(self.timeout_s):
                if payload is None:
                    answer = await self._client().get(path)
                else:
                    data = json.dumps(payload, separators=(",", ":")).encode()
                    answer = await self._client().post(path, data)
        except TimeoutError as exc:
            raise BackendError(f"no answer from {path} within {self.timeout_s} s") from exc
        except (OSError, TransportError, h11.ProtocolError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if answer.status >= 400:
            text = answer.body[:200].decode(errors="replace")
            raise BackendError(f"HTTP {answer.status} from {path}: {text}", answer.status)
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise BackendError(f"non-JSON answer from {path}") from exc


def warm_imports() -> None:
    """Import what the first completion needs ahead of it (run in a thread after initialize)."""
    import rapidfuzz.distance  # noqa: F401

    import core.wire  # noqa: F401
    import lsp_server.http11  # noqa: F401
