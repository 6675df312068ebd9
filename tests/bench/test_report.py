"""`flywheel bench all --quick --out`: every suite runs for real and lands in one JSON report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import table_rows
from bench.rows import Reference, Target, row


def test_bench_all_quick_writes_one_report_with_reference_ratios(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report" / "bench.json"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        FLYWHEEL_DATA_DIR=str(tmp_path / "data"),
        FLYWHEEL_CONFIG=str(tmp_path / "absent.toml"),
        # Shorter waits than `flywheel up`'s defaults (episodes finalized, the trainer's polls, the
        # eval gate's perplexity text), as in the other tests: the figures of a smoke run mean little.
        FLYWHEEL_BACKEND__FINALIZE_INTERVAL_S="0.2",
        FLYWHEEL_TRAINER__POLL_S="1",
        FLYWHEEL_TRAINER__GATE__PPL_CHARS="3000",
        # The turnaround's checkpoint goes live on upload, with no canary traffic to wait for.
        FLYWHEEL_CANARY__SHARE="0",
        # A token configured for another backend: the benchmarks' private backends make their own.
        FLYWHEEL_BACKEND__TOKEN="fw_a-token-for-some-other-backend",
    )
    command = ["bench", "all", "--quick", "--model", str(tiny_model_dir), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads(out.read_text())
    assert set(report["suites"]) == {"lsp", "backend", "trainer"}
    assert report["machine"]["cpus"] >= 1 and report["machine"]["model"] == str(tiny_model_dir)
    assert {r["suite"] for r in report["summary"]} == {"lsp", "backend", "trainer"}
    for summary_row in report["summary"]:
        assert isinstance(summary_row["value"], int | float) and math.isfinite(summary_row["value"]), (
            summary_row
        )
        assert summary_row["met"] in (True, False, None)
    with_reference = {r["figure"]: r for r in report["summary"] if r["reference"] is not None}
    # Each reference measured in the same run: bare pygls, one sequential client, a raw decode,
    # plain SQLite inserts, a raw forward+backward.
    assert len(with_reference) >= 5, list(with_reference)
    for figure, summary_row in with_reference.items():
        assert summary_row["reference"]["value"] > 0, figure
        assert summary_row["ratio"] > 0, figure
    # The readable table is printed too.
    assert "event ingestion, batches of 100" in done.stdout


def test_a_row_takes_its_ratio_from_the_reference_and_its_verdict_from_the_target() -> None:
    ingest = row(
        "backend", "ingest", 10_000.0, "events/s", Target(">=", 20_000), Reference("plain", 40_000, "rows/s")
    )
    assert ingest["ratio"] == 0.25 and ingest["met"] is False and ingest["target"] == "≥ 20000 events/s"
    startup = row("lsp", "start", 0.6, "s", Target("<=", 1.25, of_ratio=True), Reference("bare", 0.5, "s"))
    assert startup["ratio"] == pytest.approx(1.2) and startup["met"] is True
    plain = row("backend", "p50", 12.0, "ms")
    assert plain["ratio"] is None and plain["met"] is None and plain["reference"] is None
    assert [cells[-1] for cells in table_rows([ingest, startup, plain])] == ["NO", "yes", ""]
