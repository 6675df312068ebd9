"""The trainer's adapter directories: candidates it wrote, and the versions the backend knows.

Layout under `settings.trainer_dir`:
    candidates/<utc time>-from-<parent>/   written by a cycle, until the backend names it
    adapters/<version>/                    adapters by backend version (uploaded or downloaded)
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch
from peft import PeftModel

from core.atomic import atomic_dir, fsync_dir
from core.wire import ADAPTER_FILES

OPTIMIZER_FILE = "optimizer.pt"
# The CheckpointMetadata a candidate is to be uploaded with: a restarted trainer uploads it as is.
UPLOAD_FILE = "upload.json"
# Adapters kept locally besides the live one: the newest few, for quick continuation after a swap.
KEEP_ADAPTERS = 3

# Backend versions become directory names: nothing that could leave the adapters directory.
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise ValueError(f"unsafe checkpoint version name {version!r}")
    return version


def adapter_dir(trainer_dir: Path, version: str) -> Path:
    return trainer_dir / "adapters" / check_version(version)


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


def save_adapter_atomic(
    model: PeftModel, dest: Path, optimizer: torch.optim.Optimizer | None = None, upload: str | None = None
) -> Path:
    """Saves the adapter (peft `save_pretrained`), with the optimizer state and the upload's metadata
    JSON when given, so that `dest` appears whole or not at all."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(str(tmp))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if upload is not None:
            (tmp / UPLOAD_FILE).write_text(upload)
        missing = [name for name in ADAPTER_FILES if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"save_pretrained wrote no {missing}")
    return dest


def new_candidate_dir(trainer_dir: Path, parent_version: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return (
        trainer_dir
        / "candidates"
        / f"{stamp}-{time.time_ns() % 10**9:09d}-from-{check_version(parent_version)}"
    )


def adopt_candidate(candidate: Path, trainer_dir: Path, version: str) -> Path:
    """Files an uploaded candidate under the version the backend gave it, so that if that version
    goes live the next cycle continues from it without downloading it."""
    dest = adapter_dir(trainer_dir, version)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(candidate, dest)
    fsync_dir(dest.parent)
    fsync_dir(candidate.parent)
    return dest


def clean_trainer_dir(trainer_dir: Path, keep: set[str], pending: str | None = None) -> list[Path]:
    """Removes what a crash or an old cycle left: half-written temp dirs, candidates other than the
    pending one, and adapters beyond the newest KEEP_ADAPTERS and those in `keep`. Returns them."""
    removed = []
    candidates = trainer_dir / "candidates"
    if candidates.is_dir():
        removed += [p for p in candidates.iterdir() if p.name != pending]
    adapters = trainer_dir / "adapters"
    if adapters.is_dir():
        removed += [p for p in adapters.iterdir() if p.name.startswith(".")]
        versions = sorted(
            (p for p in adapters.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        removed += [p for p in versions[KEEP_ADAPTERS:] if p.name not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
