"""The files simulated developers write: a fixed held-out evaluation set and rotating training files."""

from __future__ import annotations

import hashlib
import json
import shutil
import sysconfig
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


def held_out_corpus(model: Path, dest: Path) -> Path:
    """The standard-library files a bootstrapped model was never trained on (its held-out set,
    listed in its flywheel_bootstrap.json), copied under `dest`: code the base model has not seen,
    on any machine that built the model."""
    manifest = model / "flywheel_bootstrap.json"
    if not manifest.is_file():
        raise SystemExit(f"flywheel simulate: {model} is not a bootstrapped model; pass --corpus DIR")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dest.mkdir(parents=True, exist_ok=True)
    for key in json.loads(manifest.read_text())["corpus"]["held_out_files"]:
        root, _, relative = key.partition("/")
        if root == "stdlib" and (stdlib / relative).is_file():
            shutil.copyfile(stdlib / relative, dest / relative.replace("/", "__"))
    return dest
