"""`make gpu-check` (bench/gpu_check.py) on a machine without CUDA: it refuses at once, in one line,
before building a model or starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_gpu_check_refuses_without_cuda(tmp_path: Path) -> None:
    # No device visible, on any machine: the refusal is what is under test.
    env = dict(
        os.environ, CUDA_VISIBLE_DEVICES="", FLYWHEEL_DATA_DIR=str(tmp_path / "state"), TMPDIR=str(tmp_path)
    )
    check = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 1, check.stdout + check.stderr
    lines = [line for line in check.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: "), check.stderr
    assert check.stdout == ""
    # Nothing was built or started: no model, no backend state, no work directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
