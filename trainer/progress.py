"""Progress of long work (a trainer cycle's update, `flywheel simulate`'s hour): how far, how long
it has taken and about how long is left. On a terminal a tqdm bar; otherwise (a log file, a service
manager's journal) a plain log line every `every_s` seconds and at the end, never a bar's control
characters. A sink, when given, receives every step's report (tests, the dashboard).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("flywheel.progress")

# Plain lines: one at most this often (and one at the end), so an hour's run says where it is
# about every half minute without burying the per-cycle lines.
EVERY_S = 30.0


@dataclass(frozen=True)
class ProgressReport:
    description: str
    done: int
    total: int
    elapsed_s: float
    # At the pace so far; None before the first step.
    left_s: float | None
    status: str = ""

    def line(self, unit: str) -> str:
        share = 100.0 * self.done / self.total if self.total else 100.0
        left = "" if self.left_s is None else f", about {tqdm.format_interval(self.left_s)} left"
        status = f" ({self.status})" if self.status else ""
        return (
            f"{self.description}: {self.done}/{self.total} {unit} ({share:.0f}%){status},"
            f" {tqdm.format_interval(self.elapsed_s)} elapsed{left}"
        )


Sink = Callable[[ProgressReport], None]


class Progress:
    """`total` steps of work; `advance()` after each. A context manager: the bar closes on exit."""

    def __init__(
        self,
        description: str,
        total: int,
        *,
        unit: str = "steps",
        file: IO[str] | None = None,
        sink: Sink | None = None,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self.status = ""
        self._sink = sink
        self._every_s = every_s
        self._clock = clock
        self._started = self._last_line = clock()
        stream = file if file is not None else sys.stderr
        self._bar: tqdm[Any] | None = None
        self._redirect: Any = None
        if _is_terminal(stream):
            self._bar = tqdm(
                total=self.total, desc=description, unit=f" {unit}", file=stream, dynamic_ncols=True
            )
            # Log lines printed while the bar is up go above it instead of through it.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def advance(self, steps: int = 1, status: str | None = None) -> ProgressReport:
        self.done = min(self.done + steps, self.total) if self.total else self.done + steps
        if status is not None:
            self.status = status
        report = self.report()
        if self._bar is not None:
            if status is not None:
                # A new phase without a step (a trainer cycle) is drawn at once.
                self._bar.set_postfix_str(status, refresh=steps == 0)
            self._bar.update(steps)
        elif self.done >= self.total or self._clock() - self._last_line >= self._every_s:
            self._last_line = self._clock()
            log.info("%s", report.line(self.unit))
        if self._sink is not None:
            self._sink(report)
        return report

    def report(self) -> ProgressReport:
        elapsed = self._clock() - self._started
        left = None
        if self.done:
            left = max(self.total - self.done, 0) * elapsed / self.done
        return ProgressReport(self.description, self.done, self.total, elapsed, left, self.status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._redirect.__exit__(None, None, None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a file-like stream without one
        return False
