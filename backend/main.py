"""`flywheel backend`: the ASGI app on uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from backend.app import create_app
from core.config import Settings


def serve(settings: Settings) -> None:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.backend.host,
        port=settings.backend.port,
        log_level="info",
        access_log=settings.backend.access_log,
        # A client that keeps its connection open must not hold a stop (or a restart) forever.
        timeout_graceful_shutdown=10,
    )
