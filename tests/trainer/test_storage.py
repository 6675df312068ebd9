"""Crash-safe adapter directories and trainer state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from trainer_support import save_tiny_model

from core.atomic import atomic_dir, write_file_atomic
from core.config import TrainerConfig
from core.wire import ADAPTER_FILES
from trainer.checkpoint import adapter_dir, check_version, is_complete, save_adapter_atomic
from trainer.policy import load_policy
from trainer.state import STATE_FILE, TrainerState, load_state, save_state


@pytest.fixture
def policy(tmp_path: Path):
    save_tiny_model(tmp_path / "base")
    return load_policy(str(tmp_path / "base"), None, TrainerConfig(), torch.device("cpu"))


def test_save_writes_the_adapter_files_and_nothing_else(policy, tmp_path: Path) -> None:
    dest = save_adapter_atomic(policy, tmp_path / "out" / "cand")
    assert is_complete(dest)
    assert os.listdir(tmp_path / "out") == ["cand"]


def test_failed_save_leaves_no_partial_directory(policy, tmp_path: Path, monkeypatch) -> None:
    real_save = policy.save_pretrained

    def save_then_crash(path: str, **kwargs: object) -> None:
        real_save(path, **kwargs)  # the files are really written...
        raise OSError("disk full")  # ...then the process fails before the rename

    monkeypatch.setattr(policy, "save_pretrained", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_adapter_atomic(policy, tmp_path / "out" / "cand")
    assert os.listdir(tmp_path / "out") == []


def test_atomic_dir_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "v1"):
        pass


def test_state_round_trip_and_default(tmp_path: Path) -> None:
    assert load_state(tmp_path) == TrainerState()
    save_state(tmp_path, TrainerState(cursor=42, last_version="v3"))
    state = load_state(tmp_path)
    assert (state.cursor, state.last_version) == (42, "v3")
    assert state.updated_at > 0
    assert os.listdir(tmp_path) == [STATE_FILE]


def test_failed_state_write_keeps_the_old_state(tmp_path: Path, monkeypatch) -> None:
    save_state(tmp_path, TrainerState(cursor=7))

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_file_atomic(tmp_path / STATE_FILE, b'{"cursor": 99}')
    monkeypatch.undo()
    assert load_state(tmp_path).cursor == 7
    assert os.listdir(tmp_path) == [STATE_FILE]


@pytest.mark.parametrize("version", ["", "../v1", "v1/..", ".hidden", "a b"])
def test_unsafe_versions_are_refused(version: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_version(version)
    with pytest.raises(ValueError):
        adapter_dir(tmp_path, version)


def test_adapter_files_are_the_wire_contract(policy, tmp_path: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()  # as after an update: peft starts lora_B at zero
    dest = save_adapter_atomic(policy, tmp_path / "c")
    assert set(ADAPTER_FILES) <= set(os.listdir(dest))  # peft adds a README.md, never uploaded
    config = json.loads((dest / "adapter_config.json").read_text())
    cfg = TrainerConfig()
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", cfg.lora_r, cfg.lora_alpha)
    # The weights are the policy's adapter, exactly: what the backend will serve.
    saved, adapter = load_file(dest / "adapter_model.safetensors"), get_peft_model_state_dict(policy)
    assert saved.keys() == adapter.keys() and any("lora_B" in key for key in saved)
    assert all(torch.equal(saved[key], adapter[key]) for key in saved)
