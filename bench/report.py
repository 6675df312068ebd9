"""`flywheel bench`: runs the suites, writes one JSON report and prints its summary as a table.

Each suite module (bench/lsp.py, backend.py, trainer.py, faults/suite.py) has `run(settings,
argv)`, which measures, prints its own figures as it goes and returns them as a dict;
`summary(figures)`, which turns them into the report's headline rows (bench/rows.py); and `QUICK`,
the options of a small smoke run. A suite is imported only once it is chosen: the trainer's loads
torch, which `flywheel bench lsp` has no need of.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

# What `all` runs: the performance suites. The faults suite kills processes for most of an hour
# and runs only by name; so does serving, which compares the engines on a 0.5B-shaped model.
ALL_SUITES = ("lsp", "backend", "trainer")
# The suites that serve or train a model, and so take `--model`.
MODEL_SUITES = {"backend", "trainer", "faults", "serving", "store"}
# What the bench extra (pyproject.toml) adds to the product's dependencies.
BENCH_EXTRA = {"aiohttp"}
REPORT_NAME = "bench-report.json"


class Suite(Protocol):
    """What a suite module has."""

    QUICK: list[str]

    def run(self, settings: Any, argv: list[str]) -> dict[str, Any]: ...

    def summary(self, figures: dict[str, Any]) -> list[dict[str, Any]]: ...


def load_suite(name: str) -> Suite:
    """The suite's module, imported here and only here; a missing extra stops the run before any
    suite has run, with the install that brings it."""
    try:
        match name:
            case "lsp":
                from bench import lsp as module
            case "backend":
                from bench import backend as module
            case "trainer":
                from bench import trainer as module
            case "serving":
                from bench import serving as module
            case "store":
                from bench import store as module
            case "faults":
                from bench.faults import suite as module
            case _:
                raise ValueError(f"no suite named {name!r}")
    except ModuleNotFoundError as missing:
        if missing.name not in BENCH_EXTRA:
            raise
        raise SystemExit(
            f"flywheel bench {name} needs {missing.name}, which comes with the bench extra:"
            " pip install 'flywheel[bench]' (from a checkout: pip install -e '.[bench]')"
        ) from None
    return module


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


def _suite_argv(name: str, module: Suite, options: argparse.Namespace, rest: list[str]) -> list[str]:
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
    chosen = {name: load_suite(name) for name in (ALL_SUITES if suite == "all" else [suite])}
    if suite != "all" and options.out is None:
        # One suite without --out prints its figures and writes nothing, as it always has.
        chosen[suite].run(settings, _suite_argv(suite, chosen[suite], options, rest))
        return 0
    report = collect(settings, chosen, options, rest)
    path = options.out or settings.state_dir / REPORT_NAME
    write_report(report, path)
    print_table(report["summary"])
    print(f"report written to {path}")
    return 0


def collect(
    settings: Any, chosen: dict[str, Suite], options: argparse.Namespace, rest: list[str]
) -> dict[str, Any]:
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
    for name, module in chosen.items():
        started = time.perf_counter()
        figures = module.run(settings, _suite_argv(name, module, options, rest))
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
