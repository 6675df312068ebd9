"""core/atomic.py: the one crash-safe writer, as the bootstrap and the backend's checkpoints use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.checkpoints import CheckpointError, write_checkpoint
from core.atomic import atomic_dir
from core.wire import ADAPTER_FILES, CHECKPOINT_METADATA, CheckpointMetadata


def test_atomic_dir_replaces_a_directory_whole_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_dir(tmp_path / "model", replace=True) as tmp:
        (tmp / "new.bin").write_text("half")
        raise OSError("disk full")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(tmp_path / "model") == ["old.bin"]
    with atomic_dir(tmp_path / "model", replace=True) as tmp:
        (tmp / "new.bin").write_text("new")
    # The old directory is gone, not left beside the new one.
    assert os.listdir(tmp_path) == ["model"] and os.listdir(tmp_path / "model") == ["new.bin"]


def test_a_checkpoint_is_written_whole_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {name: name.encode() for name in ADAPTER_FILES}
    meta = CheckpointMetadata(base_model="m", parent_version="base")
    path = write_checkpoint(tmp_path, "v1", files, meta)
    assert sorted(os.listdir(path)) == sorted([*ADAPTER_FILES, CHECKPOINT_METADATA])
    assert CheckpointMetadata.model_validate_json((path / CHECKPOINT_METADATA).read_text()) == meta
    with pytest.raises(CheckpointError, match="already exists"):
        write_checkpoint(tmp_path, "v1", files, meta)

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="power cut"):
        write_checkpoint(tmp_path, "v2", files, meta)
    assert os.listdir(tmp_path) == ["v1"]  # no v2, and no half-written staging directory
