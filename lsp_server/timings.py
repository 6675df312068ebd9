"""Where the language server's own time goes, for `flywheel/status` and `flywheel bench lsp`:
the latest few thousand samples of each kind, summarized as percentiles on request."""

from __future__ import annotations

from collections import deque

KEEP = 5000


class Timings:
    def __init__(self) -> None:
        self._samples: dict[str, deque[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        samples = self._samples.get(name)
        if samples is None:
            samples = self._samples[name] = deque(maxlen=KEEP)
        samples.append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: how many samples, and p50, p99 and max in milliseconds."""
        return {name: _percentiles(list(samples)) for name, samples in self._samples.items() if samples}

    def clear(self) -> None:
        self._samples.clear()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0, 4)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}
