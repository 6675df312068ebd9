"""The codebases `make simulate` runs on, fixed before any run (simulate/PREREGISTRATION.md).

Two are packages pinned in the dev extras, copied from the installed package less their data
tables (generated or tabular modules no developer types: an inline model is not judged on them);
the third, `stdlib`, is the standard-library files the bootstrapped model held out, which
`flywheel simulate` copies itself when it gets no --corpus.

    python -m simulate.codebases NAME DEST    copies package NAME's code into DEST (made afresh)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

# Package → its modules that are data, not code (paths relative to the package).
PACKAGES: dict[str, tuple[str, ...]] = {
    "rich": (
        "_emoji_codes.py",
        "_palettes.py",
        "_spinners.py",
        "_unicode_data",
        "default_styles.py",
        "_export_format.py",
        "_cell_widths.py",
    ),
    # _identifier.py is one generated regular expression of Unicode identifier characters.
    "jinja2": ("_identifier.py",),
}
# In the order `make simulate-all` runs them.
PREREGISTERED = ("rich", "stdlib", "jinja2")


def package_dir(name: str) -> Path | None:
    """Where package `name` is installed; None when it is not."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def copy_package(name: str, dest: Path) -> Path:
    """Package `name`'s code, less its data tables and caches, copied into a fresh `dest`."""
    source = package_dir(name)
    if source is None:
        raise SystemExit(f"{name} is not installed: pip install -e '.[dev]' pins it")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for table in PACKAGES[name]:
        path = dest / table
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in PACKAGES:
        print(f"usage: python -m simulate.codebases {{{','.join(PACKAGES)}}} DEST", file=sys.stderr)
        return 2
    print(copy_package(argv[0], Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
