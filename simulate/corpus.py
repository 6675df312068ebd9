"""The files simulated developers write: a fixed held-out evaluation set and rotating training files.

A developer adds code to a module whose header (leading comments and module docstring) is already
written, as when extending a file: the header is the document's text when it opens, the code after
it is typed. Prose is not what an inline code model is judged on, and typed from the top, the first
lines of most standard-library files are licence text and docstrings.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import sysconfig
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    name: str
    text: str
    # Characters of `text` already in the file when the developer opens it.
    header: int = 0


def header_length(text: str) -> int:
    """Characters of `text` before its first line of code: leading comments and blank lines, and
    the module docstring with them. 0 for a file that does not parse and has no leading comments."""
    lines = text.splitlines(keepends=True)
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        body = []
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        end_line = body[0].end_lineno or 0
    else:
        end_line = 0
    while end_line < len(lines) and (not lines[end_line].strip() or lines[end_line].lstrip().startswith("#")):
        end_line += 1
    return len("".join(lines[:end_line]))


def load_corpus(root: Path, max_lines: int) -> list[SourceFile]:
    """Every readable .py file under `root` with code after its header, the code cut to `max_lines`
    lines, in path order."""
    files = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        # Editors send "\n" documents for these files; tabs are kept as written.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        header = header_length(text)
        code = text[header:].split("\n")
        if max_lines > 0:
            code = code[:max_lines]
        if "".join(code).strip():
            code_text = "\n".join(code).rstrip("\n") + "\n"
            files.append(SourceFile(str(path.relative_to(root)), text[:header] + code_text, header))
    return files


def split_eval(files: list[SourceFile], eval_count: int) -> tuple[list[SourceFile], list[SourceFile]]:
    """(evaluation files, training files). The evaluation set is chosen by a hash of each name, so
    it stays the same across runs and cycles whatever order the files come in, and is never trained
    on. With a single file there is nothing to train on apart from it, so it serves both."""
    if len(files) < 2:
        return list(files), list(files)
    ranked = sorted(files, key=lambda f: hashlib.sha256(f.name.encode()).hexdigest())
    count = min(max(eval_count, 1), len(files) - 1)
    evaluation = sorted(ranked[:count], key=lambda f: f.name)
    training = [f for f in files if f not in evaluation]
    return evaluation, training


def training_batch(training: list[SourceFile], round_index: int, count: int) -> list[SourceFile]:
    """Round `round_index`'s training files: the next `count` in rotation."""
    if not training:
        return []
    start = round_index * count
    return [training[(start + i) % len(training)] for i in range(min(count, len(training)))]


def held_out_corpus(model: Path, dest: Path, exclude: Collection[str] = ()) -> Path:
    """The standard-library files a bootstrapped model was never trained on (its held-out set,
    listed in its flywheel_bootstrap.json) but those keyed in `exclude`, copied under a fresh
    `dest`: code the base model has not seen, on any machine that built the model."""
    manifest = model / "flywheel_bootstrap.json"
    if not manifest.is_file():
        raise SystemExit(f"flywheel simulate: {model} is not a bootstrapped model; pass --corpus DIR")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for key in json.loads(manifest.read_text())["corpus"]["held_out_files"]:
        root, _, relative = key.partition("/")
        if root == "stdlib" and key not in exclude and (stdlib / relative).is_file():
            shutil.copyfile(stdlib / relative, dest / relative.replace("/", "__"))
    return dest
