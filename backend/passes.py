"""The background passes (finalize, canary verdicts, retention): their loop, and how each is doing.

A pass that fails logs it and tries again next time, so the backend keeps serving whatever goes
wrong; but a pass that fails every time stops the loop as surely as a crash would (no episodes,
no verdicts), silently. Each pass reports every run into its `PassHealth`; `/readyz` answers 503
and the dashboard warns once one has failed `backend.stuck_after_failures` times in a row, and
/metrics counts the failures. `/healthz` keeps answering 200 while the model serves: process
supervisors restart on it, and a restart mends neither a bad row nor a full disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from backend.store import reason_of

log = logging.getLogger(__name__)

FINALIZE = "finalize"
CANARY = "canary"
RETENTION = "retention"
PASSES = (FINALIZE, CANARY, RETENTION)
_ERROR_CHARS = 300


@dataclass
class PassHealth:
    name: str
    stuck_after: int = 3
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    last_failure: float | None = None
    # One line, without values (store.reason_of): /healthz and /readyz need no token.
    last_error: str | None = None

    @property
    def stuck(self) -> bool:
        return self.consecutive_failures >= self.stuck_after

    def succeeded(self, now: float | None = None) -> None:
        if self.stuck:
            log.warning("%s pass works again after %d failures", self.name, self.consecutive_failures)
        self.runs += 1
        self.consecutive_failures = 0
        self.last_success = time.time() if now is None else now

    def failed(self, error: Exception, now: float | None = None) -> None:
        self.runs += 1
        self.failures += 1
        self.consecutive_failures += 1
        self.last_failure = time.time() if now is None else now
        self.last_error = reason_of(error)[:_ERROR_CHARS]
        if self.consecutive_failures == self.stuck_after:
            log.error(
                "%s pass has failed %d times in a row: the loop is stuck until it works again (%s)",
                self.name,
                self.consecutive_failures,
                self.last_error,
            )

    def report(self) -> dict[str, Any]:
        return {
            "stuck": self.stuck,
            "consecutive_failures": self.consecutive_failures,
            "failures": self.failures,
            "runs": self.runs,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
        }


class Passes:
    """The health of each background pass, by name."""

    def __init__(self, stuck_after: int = 3, names: tuple[str, ...] = PASSES) -> None:
        self.by_name = {name: PassHealth(name, stuck_after) for name in names}

    def __getitem__(self, name: str) -> PassHealth:
        return self.by_name[name]

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: health.report() for name, health in self.by_name.items()}

    def stuck(self) -> list[PassHealth]:
        return [health for health in self.by_name.values() if health.stuck]

    def readiness(self, model_failure: object | None) -> tuple[bool, dict[str, Any]]:
        """Whether the backend is ready (the model serves, no pass is stuck), and why not."""
        problems = [f"model unavailable: {model_failure}"] if model_failure is not None else []
        problems += [
            f"{h.name} pass failed {h.consecutive_failures} times in a row: {h.last_error}"
            for h in self.stuck()
        ]
        body = {"status": "not ready" if problems else "ready", "problems": problems, "passes": self.report()}
        return not problems, body


async def repeat(
    job: Callable[[], Awaitable[Any]],
    health: PassHealth,
    interval_s: float,
    stop: asyncio.Event,
    *,
    last_pass: bool = False,
) -> None:
    """Run `job` every `interval_s` until `stop` is set, reporting each run into `health`.

    With `last_pass`, one more run follows `stop` (the finalizer's keeps shutdown lossless).
    """
    while last_pass or not stop.is_set():
        try:
            await job()
        except Exception as error:
            # A failed pass (say, a locked database) must not end the loop; the next one retries.
            health.failed(error)
            log.exception("%s pass failed (%d in a row)", health.name, health.consecutive_failures)
        else:
            health.succeeded()
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            continue
