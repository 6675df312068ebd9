"""`flywheel bench`: runs the suites, writes one JSON report and prints its summary as a table.

Each suite module (lsp_server.bench, backend.bench, trainer.bench, flywheel.faults.bench) has
`run(settings, argv)`, which measures, prints its own figures as it goes and returns them as a
dict; `summary(figures)`, which turns them into the report's headline rows; and `QUICK`, the
options of a small smoke run.

A summary row's ratio is its value over a reference measured in the same run (a bare pygls
server, one sequential client, an in-process decode, plain SQLite inserts, a raw forward+backward),
so the row reads the same on a fast or a slow machine. This module imports only the standard
library at the top: lsp_server.bench uses `row`, and the language server never loads torch.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import operator
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

SUITES = {
    "lsp": "lsp_server.bench",
    "backend": "backend.bench",
    "trainer": "trainer.bench",
    "faults": "flywheel.faults.bench",
}
# What `all` runs: the performance suites. The faults suite kills processes for most of an hour
# and runs only by name.
ALL_SUITES = ("lsp", "backend", "trainer")
# The suites that serve or train a model, and so take `--model`.
MODEL_SUITES = {"backend", "trainer", "faults"}
REPORT_NAME = "bench-report.json"

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


def machine(model: str | None) -> dict[str, Any]:
    """Where the figures were measured; the load averages say how busy the machine was."""
    try:
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch_version,
        "model": model,
    }


def _parser(suite: str) -> argparse.ArgumentParser:
    # No abbreviations: a prefix of a suite's own option must reach the suite untouched; nor
    # --help for one suite, whose own parser then lists its options.
    parser = argparse.ArgumentParser(
        prog=f"flywheel bench {suite}",
        description="Options of the report; any other options go to the suite.",
        allow_abbrev=False,
        add_help=suite == "all",
    )
    parser.add_argument(
        "--out", type=Path, help=f"write the JSON report here (all: default {REPORT_NAME} in the data dir)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    parser.add_argument("--model", help="model directory or Hub id for the backend and trainer suites")
    return parser


def _suite_argv(name: str, options: argparse.Namespace, rest: list[str]) -> list[str]:
    module = importlib.import_module(SUITES[name])
    argv = list(module.QUICK) if options.quick else []
    if options.model and name in MODEL_SUITES:
        argv += ["--model", options.model]
    # The user's own options come last, so they win over the quick sizes.
    return argv + rest


def main(settings: Any, suite: str, argv: Sequence[str]) -> int:
    """`flywheel bench SUITE [--out PATH] [--quick] [--model M] [suite options]`."""
    parser = _parser(suite)
    options, rest = parser.parse_known_args(list(argv))
    if suite == "all" and rest:
        parser.error(f"options for one suite only work with that suite: {' '.join(rest)}")
    if options.model and suite not in MODEL_SUITES | {"all"}:
        parser.error(f"the {suite} suite takes no model")
    if suite != "all" and options.out is None:
        # One suite without --out prints its figures and writes nothing, as it always has.
        importlib.import_module(SUITES[suite]).run(settings, _suite_argv(suite, options, rest))
        return 0
    chosen = list(ALL_SUITES) if suite == "all" else [suite]
    report = collect(settings, chosen, options, rest)
    path = options.out or settings.state_dir / REPORT_NAME
    write_report(report, path)
    print_table(report["summary"])
    print(f"report written to {path}")
    return 0


def collect(settings: Any, chosen: list[str], options: argparse.Namespace, rest: list[str]) -> dict[str, Any]:
    """Runs each chosen suite in turn; the report with every suite's figures and the summary."""
    serves_a_model = any(name in MODEL_SUITES for name in chosen)
    report: dict[str, Any] = {
        "machine": machine((options.model or settings.base_model) if serves_a_model else None),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "wall_s": {},
        "suites": {},
        "summary": [],
    }
    for name in chosen:
        module = importlib.import_module(SUITES[name])
        started = time.perf_counter()
        figures = module.run(settings, _suite_argv(name, options, rest))
        report["wall_s"][name] = round(time.perf_counter() - started, 1)
        report["suites"][name] = figures
        report["summary"] += module.summary(figures)
    report["machine"]["load_average_after"] = list(os.getloadavg())
    return report


def _plain(value: Any) -> Any:
    # numpy scalars and the like: JSON has only plain numbers.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_report(report: dict[str, Any], path: Path) -> None:
    """Written whole or not at all: a report read while a run writes it is never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    partial.replace(path)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table_rows(summary: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The summary as text cells: suite, figure, value, reference, ratio, target, met."""
    cells = []
    for r in summary:
        ref = r["reference"]
        cells.append(
            (
                r["suite"],
                r["figure"],
                f"{_number(r['value'])} {r['unit']}",
                f"{_number(ref['value'])} {ref['unit']} {ref['figure']}" if ref else "",
                f"{r['ratio']:.2f}×" if r["ratio"] is not None else "",
                r["target"] or "",
                {True: "yes", False: "NO", None: ""}[r["met"]],
            )
        )
    return cells


def print_table(summary: list[dict[str, Any]]) -> None:
    # rich comes with transformers (through typer), which every install of this project has.
    from rich.console import Console
    from rich.table import Table

    table = Table(title="flywheel bench: summary (ratio = value / reference, same run)")
    for column in ("suite", "figure", "value", "reference", "ratio", "target", "met"):
        table.add_column(column, overflow="fold")
    for cells in table_rows(summary):
        table.add_row(*cells)
    console = Console()
    # Piped into a file or a log, rich would wrap at 80 columns; the rows need more.
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
