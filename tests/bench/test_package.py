"""The benchmarks stand beside the product (bench/): the product never imports them nor their load
generator's aiohttp, the stub backend the lsp suite measures against is a module of its own that
speaks the wire contract, and a missing bench extra is named."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.wire import CompleteResponse, EventsResponse

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "backend", "trainer", "lsp_server", "simulate")


def _imported(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, wherever in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_product_imports_neither_the_benchmarks_nor_their_load_generator() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported(path) & {"bench", "aiohttp", "flywheel"})
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_stub_backend_answers_in_the_wire_contract() -> None:
    stub = subprocess.Popen(
        [sys.executable, "-m", "bench.stub_backend"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert stub.stdout is not None
        url = f"http://127.0.0.1:{stub.stdout.readline().strip()}"
        with httpx.Client(base_url=url, timeout=10) as http:
            first = CompleteResponse.model_validate(
                http.post("/v1/complete", json={"context": {"prefix": "def f("}}).raise_for_status().json()
            )
            second = CompleteResponse.model_validate(
                http.post("/v1/complete", json={"context": {"prefix": "x = "}}).raise_for_status().json()
            )
            events = [{"event_id": f"e{n:08d}", "completion_id": first.completion_id} for n in range(3)]
            stored = EventsResponse.model_validate(
                http.post("/v1/events", json={"events": events}).raise_for_status().json()
            )
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    assert first.text and first.completion_id != second.completion_id
    assert (stored.stored, stored.duplicates, stored.refused) == (3, 0, [])


@pytest.mark.parametrize("suite", ["backend", "all"])
def test_a_suite_that_needs_the_bench_extra_says_which_to_install(suite: str, tmp_path: Path) -> None:
    # aiohttp made unimportable, as in an install without the bench extra.
    without_aiohttp = (
        "import sys; sys.modules['aiohttp'] = None; from flywheel.cli import main;"
        f" main(['bench', {suite!r}, '--quick', '--out', {str(tmp_path / 'report.json')!r}])"
    )
    done = subprocess.run(
        [sys.executable, "-c", without_aiohttp], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "pip install 'flywheel[bench]'" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    # Nothing ran: the check comes before the first suite.
    assert not (tmp_path / "report.json").exists() and "flywheel bench lsp" not in done.stdout
