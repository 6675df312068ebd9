"""A summary row of `flywheel bench`'s report: a figure, its target and the reference it is
measured against.

A row's ratio is its value over a reference measured in the same run (a bare pygls server, one
sequential client, an in-process decode, plain SQLite inserts, a raw forward+backward), so the row
reads the same on a fast or a slow machine. Standard library only: the lsp suite uses it, and
nothing it loads may pull in torch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

_OPS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "<": ("<", operator.lt),
    "<=": ("≤", operator.le),
    ">=": ("≥", operator.ge),
    ">": (">", operator.gt),
}


@dataclass(frozen=True)
class Target:
    """A bound on a row's value, or on its ratio to the reference (`of_ratio`)."""

    op: str
    bound: float
    of_ratio: bool = False

    def text(self, unit: str) -> str:
        symbol = _OPS[self.op][0]
        return f"{symbol} {self.bound:g}× reference" if self.of_ratio else f"{symbol} {self.bound:g} {unit}"

    def met(self, value: float | None, ratio: float | None) -> bool:
        measured = ratio if self.of_ratio else value
        return measured is not None and _OPS[self.op][1](measured, self.bound)


@dataclass(frozen=True)
class Reference:
    """What a figure is measured against, in the same run and the same unit."""

    figure: str
    value: float
    unit: str


def row(
    suite: str,
    figure: str,
    value: float | None,
    unit: str,
    target: Target | None = None,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """One summary row; `ratio` is value / reference value where there is a reference."""
    ratio: float | None = None
    if reference is not None and value is not None and reference.value:
        ratio = value / reference.value
    return {
        "suite": suite,
        "figure": figure,
        "value": value,
        "unit": unit,
        "target": target.text(unit) if target else None,
        "met": target.met(value, ratio) if target else None,
        "reference": asdict(reference) if reference else None,
        "ratio": round(ratio, 4) if ratio is not None else None,
    }

