"""The pre-registered codebases (simulate/PREREGISTRATION.md) load as `make simulate` copies them:
their code, less the data tables, in the 15-80 modules a simulation rotates through."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulate.codebases import PACKAGES, PREREGISTERED, copy_package, main, package_dir
from simulate.corpus import load_corpus, split_eval


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_a_pinned_package_copies_as_its_code_less_its_data_tables(name: str, tmp_path: Path) -> None:
    if package_dir(name) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    dest = tmp_path / name
    (dest / "stale.py").parent.mkdir(parents=True)
    (dest / "stale.py").write_text("x = 1\n")
    assert main([name, str(dest)]) == 0
    files = load_corpus(dest, 120)
    names = {f.name for f in files}
    # Made afresh: nothing of a previous copy, no caches, no data tables.
    assert "stale.py" not in names and not list(dest.rglob("__pycache__"))
    for table in PACKAGES[name]:
        assert not (dest / table).exists()
        assert not any(n == table or n.startswith(table + "/") for n in names)
    assert 15 <= len(files) <= 80
    evaluation, training = split_eval(files, 8)
    # `make simulate`'s 8 evaluation files, and enough others to train on for ten cycles of three.
    assert len(evaluation) == 8 and len(training) >= 12


def test_the_third_codebase_is_a_package_of_ordinary_size(tmp_path: Path) -> None:
    assert PREREGISTERED == ("rich", "stdlib", "jinja2")
    if package_dir("jinja2") is None:
        pytest.skip("jinja2 is not installed (pip install -e '.[dev]')")
    files = load_corpus(copy_package("jinja2", tmp_path / "jinja2"), 120)
    assert 15 <= len(files) <= 40
    # Code to type after each header, not one generated expression.
    assert all(len(f.text) - f.header > 200 for f in files)


def test_an_unknown_package_is_refused(tmp_path: Path) -> None:
    assert main(["numpy", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
