"""The files simulated developers write: a fixed held-out evaluation set and rotating training files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    name: str
    text: str


def load_corpus(root: Path, max_lines: int) -> list[SourceFile]:
    """Every readable, non-empty .py file under `root`, cut to `max_lines` lines, in path order."""
    files = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        # Editors send "\n" documents for these files; tabs are kept as written.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        text = "\n".join(lines[:max_lines]) if max_lines > 0 else "\n".join(lines)
        if text.strip():
            files.append(SourceFile(str(path.relative_to(root)), text.rstrip("\n") + "\n"))
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
