"""HTTP calls to the backend (`backend.wire` is the contract).

httpx and the wire models (pydantic) are imported on first use, never while the editor waits for
`initialize`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from backend.wire import CompleteRequest, CompleteResponse

logger = logging.getLogger(__name__)


class BackendError(Exception):
    """The backend could not be reached, or did not answer as the contract says."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        # The HTTP status when the backend answered with an error; None for transport failures.
        self.status = status


class BackendClient:
    def __init__(self, base_url: str, token: str = "", timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s),
                # Loopback or a configured URL: proxies from the environment would only get in the way.
                trust_env=False,
            )
        return self._http

    async def complete(self, request: CompleteRequest) -> CompleteResponse:
        from backend.wire import API_PREFIX, CompleteResponse

        body = await self._post(f"{API_PREFIX}/complete", request.model_dump(mode="json"))
        try:
            return CompleteResponse.model_validate(body)
        except ValueError as exc:
            raise BackendError(f"unexpected completion answer: {exc}") from exc

    async def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        from backend.wire import API_PREFIX, EventsRequest, EventsResponse

        body = await self._post(f"{API_PREFIX}/events", EventsRequest(events=events).model_dump(mode="json"))
        try:
            return EventsResponse.model_validate(body).model_dump()
        except ValueError as exc:
            raise BackendError(f"unexpected events answer: {exc}") from exc

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _post(self, path: str, payload: dict[str, Any]) -> Any:
        import httpx

        try:
            response = await self._client().post(path, json=payload)
        except httpx.HTTPError as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if response.status_code >= 400:
            raise BackendError(
                f"HTTP {response.status_code} from {path}: {response.text[:200]}", response.status_code
            )
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"non-JSON answer from {path}") from exc


def warm_imports() -> None:
    """Import what the first completion needs ahead of it (run in a thread after initialize)."""
    import httpx  # noqa: F401
    import rapidfuzz.distance  # noqa: F401

    import backend.wire  # noqa: F401
