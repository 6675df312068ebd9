"""The simulation's figures as PNGs: one run's cycles (cycles.png, written as each cycle ends) and
several finished runs in one figure (`flywheel simulate --plot-only OUT DIR...`, the README's
docs/learning.png from the pre-registered codebases' runs).

Where a run compared show rules (--compare-floors), each rate is drawn twice: solid for the
version's own rule (its learned show policy where it has one), dashed for its confidence floors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulate.report import RULES, CycleRow, read_csv

# (title, CycleRow column without a rule's prefix, drawn for each rule).
PANELS = [
    ("accept rate", "accept_rate", True),
    ("ARC per 100 requests", "arc_per_100", True),
    ("shown rate", "shown_rate", True),
    ("model calls saved", "calls_saved", True),
    ("held-out perplexity", "heldout_ppl", False),
    ("honest mean reward", "mean_reward", True),
]
# Shares, drawn from 0 to 1.
RATES = {"accept_rate", "shown_rate", "calls_saved"}
STYLE = {"version": "-", "floors": "--"}
LABEL = {"version": "own rule", "floors": "floors"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def compared(rows: Sequence[CycleRow]) -> bool:
    """Whether the run evaluated its floors beside its own rule."""
    return any(row.floors_requests is not None for row in rows)


def _series(rows: Sequence[CycleRow], column: str) -> list[tuple[int, float]]:
    return [(row.cycle, value) for row in rows if (value := getattr(row, column)) is not None]


def _draw(ax: Any, rows: Sequence[CycleRow], column: str, by_rule: bool, label: str, color: Any) -> None:
    rules = [rule for rule in RULES if rule == "version" or (by_rule and compared(rows))]
    for rule in rules:
        points = _series(rows, RULES[rule] + column)
        if points:
            name = f"{label}, {LABEL[rule]}" if len(rules) > 1 and label else label or LABEL[rule]
            ax.plot(*zip(*points, strict=True), STYLE[rule], marker="o", color=color, label=name)


def plot(rows: Sequence[CycleRow], path: Path) -> None:
    """One run over its cycles: a panel per figure of PANELS."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
    cycles = [row.cycle for row in rows]
    for ax, (title, column, by_rule) in zip(axes.flat, PANELS, strict=True):
        _draw(ax, rows, column, by_rule, "", None)
        ax.set_title(title)
        ax.set_xlabel("trainer cycles")
        ax.set_xticks(cycles, [f"{r.cycle}\n{r.live_version}" for r in rows])
        ax.grid(alpha=0.3)
        if by_rule and compared(rows):
            ax.legend()
        if column in RATES:
            ax.set_ylim(0, 1)
    title = "flywheel simulate: evaluation rounds after each trainer cycle"
    if compared(rows):
        title += " (solid: the version's own show rule; dashed: its confidence floors)"
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_name(out: Path) -> str:
    """A run's name in the figure: its directory's, less make simulate-all's prefix."""
    return out.name.removeprefix("flywheel-simulation-") or out.name


def plot_runs(outs: Sequence[Path], path: Path) -> None:
    """Finished runs (their output directories' cycles.csv) in one figure: a panel per figure of
    PANELS, a colour per run."""
    runs = []
    for out in outs:
        csv_path = out / "cycles.csv"
        if not csv_path.is_file():
            raise SystemExit(f"flywheel simulate --plot-only: no cycles.csv in {out}")
        runs.append((run_name(out), read_csv(csv_path)))
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, column, by_rule) in zip(axes.flat, PANELS, strict=True):
        for index, (name, rows) in enumerate(runs):
            _draw(ax, rows, column, by_rule, name, colors[index % len(colors)])
        ax.set_title(title)
        ax.set_xlabel("trainer cycles")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if column in RATES:
            ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize="small")
    compared_any = any(compared(rows) for _, rows in runs)
    fig.suptitle(
        "flywheel simulate on "
        + ", ".join(name for name, _ in runs)
        + (" (solid: own show rule; dashed: confidence floors)" if compared_any else "")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
