"""The trainer's HTTP client for the backend (models in core/wire.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx

from core.atomic import atomic_dir
from core.config import Settings
from core.local_tokens import ADMIN
from core.wire import (
    ADAPTER_FILES,
    API_PREFIX,
    TRAINER_STATUS_PATH,
    CheckpointInfo,
    CheckpointMetadata,
    Episode,
    EpisodesPage,
    ModelInfo,
    TrainerReport,
)
from trainer.checkpoint import check_version

log = logging.getLogger(__name__)

_RETRY_STATUS = {502, 503, 504}


class BackendClient:
    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + API_PREFIX,
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )
        self.retries = retries
        self.backoff_s = backoff_s

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> BackendClient:
        return cls(settings.backend.base_url, settings.access_token(ADMIN), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        """Retries what cannot have had an effect twice: any failure of an idempotent request, and
        only a refused connection for the rest (an upload that timed out may have been stored)."""
        retryable: tuple[type[Exception], ...] = (
            (httpx.TransportError,) if idempotent else (httpx.ConnectError,)
        )
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except retryable as error:
                if last:
                    raise
                log.warning("%s %s failed (%s); retrying", method, path, error)
            else:
                if not (idempotent and response.status_code in _RETRY_STATUS) or last:
                    response.raise_for_status()
                    return response
                log.warning("%s %s answered %d; retrying", method, path, response.status_code)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", "/model").json())

    def episodes(self, cursor: int, limit: int = 500) -> EpisodesPage:
        response = self._request("GET", "/episodes", params={"cursor": cursor, "limit": limit})
        return EpisodesPage.model_validate(response.json())

    def all_episodes(
        self, cursor: int, page_size: int = 500, max_count: int | None = None
    ) -> tuple[list[Episode], int]:
        """The episodes after `cursor` (at most `max_count`), and the cursor after the last of them."""
        episodes: list[Episode] = []
        while max_count is None or len(episodes) < max_count:
            want = page_size if max_count is None else min(page_size, max_count - len(episodes))
            page = self.episodes(cursor, want)
            # A page ends at its last episode's seq, so taking all of it keeps the cursor exact.
            episodes.extend(page.episodes)
            if not page.episodes or page.next_cursor <= cursor:
                return episodes, max(cursor, page.next_cursor)
            cursor = page.next_cursor
        return episodes, cursor

    def checkpoints(self) -> list[CheckpointInfo]:
        return [CheckpointInfo.model_validate(c) for c in self._request("GET", "/checkpoints").json()]

    def report(self, report: TrainerReport) -> None:
        """Best effort: the dashboard's trainer status must never stop or slow training."""
        try:
            response = self._http.post(
                TRAINER_STATUS_PATH.removeprefix(API_PREFIX),
                content=report.model_dump_json(),
                headers={"content-type": "application/json"},
                timeout=5.0,
            )
        except httpx.HTTPError as error:
            log.debug("trainer status not sent: %s", error)
            return
        if response.status_code >= 400 and response.status_code != 404:
            log.debug("trainer status refused: %d %s", response.status_code, response.text[:200])

    def upload_checkpoint(self, adapter_dir: Path, metadata: CheckpointMetadata) -> CheckpointInfo:
        files = {
            name: (name, (adapter_dir / name).read_bytes(), "application/octet-stream")
            for name in ADAPTER_FILES
        }
        response = self._request(
            "POST",
            "/checkpoints",
            idempotent=False,
            files=files,
            data={"metadata": metadata.model_dump_json()},
        )
        return CheckpointInfo.model_validate(response.json())

    def download_checkpoint(self, version: str, dest: Path) -> Path:
        """The adapter files of `version`, written into `dest` atomically."""
        check_version(version)
        with atomic_dir(dest) as tmp:
            for name in ADAPTER_FILES:
                (tmp / name).write_bytes(self._request("GET", f"/checkpoints/{version}/files/{name}").content)
        return dest
