"""What must hold after a trainer is killed, whatever the point: each check returns the problems
it found (an empty list when all is well), in words.

- Every checkpoint the backend lists is whole: its files download, adapter_config.json describes a
  LoRA adapter, the safetensors file parses and its LoRA tensors are finite.
- The trainer's directory holds nothing half-written under a name it would use: state.json
  parses; a pending candidate is whole; every candidate and adapter directory is whole. Temp
  directories (names starting with a dot) may be left by a kill; they are counted, never used.
- No episode went into one lineage twice: each trained checkpoint names the episodes it was trained
  on (`seq_after` < seq <= `seq_through` in its metrics, trainer/cycle.py); no two checkpoints the
  backend holds share one, so no version's ancestry has one twice.
- The confidence floors' evidence counts each episode once.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from safetensors.torch import load as load_safetensors

from core.wire import ADAPTER_FILES, CheckpointInfo, CheckpointMetadata
from trainer.checkpoint import UPLOAD_FILE
from trainer.cycle import SEQ_AFTER, SEQ_THROUGH
from trainer.state import STATE_FILE, TrainerState
from trainer.withholding import EVIDENCE_FILE


def adapter_problems(files: dict[str, bytes], where: str) -> list[str]:
    """Why these adapter files would not load as a LoRA adapter; [] when they would."""
    problems = []
    try:
        config = json.loads(files["adapter_config.json"])
        if config.get("peft_type") != "LORA":
            problems.append(f"{where}: adapter_config.json is not a LoRA config")
    except (ValueError, AttributeError) as error:
        problems.append(f"{where}: adapter_config.json does not parse: {error}")
    try:
        tensors = load_safetensors(files["adapter_model.safetensors"])
    except Exception as error:  # safetensors raises its own error type for a cut file
        return [*problems, f"{where}: adapter_model.safetensors does not parse: {error}"]
    if not any("lora_A" in name for name in tensors) or not any("lora_B" in name for name in tensors):
        problems.append(f"{where}: adapter_model.safetensors holds no LoRA A and B tensors")
    if not all(bool(t.float().isfinite().all()) for t in tensors.values()):
        problems.append(f"{where}: adapter_model.safetensors holds a non-finite weight")
    return problems


def local_adapter_problems(path: Path) -> list[str]:
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        return [f"{path}: {', '.join(missing)} missing"]
    return adapter_problems({name: (path / name).read_bytes() for name in ADAPTER_FILES}, str(path))


def backend_checkpoints(url: str, admin: dict[str, str]) -> tuple[list[CheckpointInfo], list[str]]:
    """The checkpoints the backend lists, and what is wrong with any of them."""
    problems = []
    with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
        answer = http.get("/v1/checkpoints").raise_for_status().json()
        listed = [CheckpointInfo.model_validate(c) for c in answer]
        for checkpoint in listed:
            files = {}
            for name in ADAPTER_FILES:
                response = http.get(f"/v1/checkpoints/{checkpoint.version}/files/{name}")
                if response.status_code != 200:
                    problems.append(f"backend {checkpoint.version}: {name} answers {response.status_code}")
                files[name] = response.content
            if len(files) == len(ADAPTER_FILES) and not problems:
                problems += adapter_problems(files, f"backend {checkpoint.version}")
    return listed, problems


def served_equals_saved(url: str, admin: dict[str, str], trainer_dir: Path, versions: list[str]) -> list[str]:
    """What the backend serves under a version is the adapter the trainer filed under it."""
    problems = []
    with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
        for version in versions:
            local = trainer_dir / "adapters" / version / "adapter_model.safetensors"
            if not local.is_file():
                continue
            served = http.get(f"/v1/checkpoints/{version}/files/adapter_model.safetensors").content
            if served != local.read_bytes():
                problems.append(f"{version}: the backend serves other weights than the trainer saved")
    return problems


@dataclass
class TrainerDir:
    state: TrainerState | None
    # Half-written directories a kill left (dot names): never taken for a checkpoint.
    temp_dirs: list[str]
    problems: list[str]


def trainer_dir_problems(trainer_dir: Path, arrived: set[str]) -> TrainerDir:
    """`arrived`: the candidate names of the checkpoints the backend holds."""
    problems: list[str] = []
    state = None
    state_path = trainer_dir / STATE_FILE
    if state_path.exists():
        try:
            data = json.loads(state_path.read_text())
            state = TrainerState(**{k: v for k, v in data.items() if k in TrainerState.__dataclass_fields__})
        except (ValueError, TypeError) as error:
            problems.append(f"{STATE_FILE} does not parse: {error}")
    temp_dirs = []
    for folder in ("candidates", "adapters"):
        parent = trainer_dir / folder
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            if entry.name.startswith("."):
                temp_dirs.append(f"{folder}/{entry.name}")
                continue
            problems += local_adapter_problems(entry)
            upload = entry / UPLOAD_FILE
            if upload.exists():
                try:
                    CheckpointMetadata.model_validate_json(upload.read_text())
                except ValueError as error:
                    problems.append(f"{entry}: {UPLOAD_FILE} does not parse: {error}")
    if state is not None and state.pending_candidate not in (None, *arrived):
        # Marked pending and not at the backend: the restarted trainer uploads it as it is on disk.
        pending = trainer_dir / "candidates" / state.pending_candidate
        if not (pending / UPLOAD_FILE).is_file():
            problems.append(f"pending candidate {state.pending_candidate} is not whole on disk")
    evidence = trainer_dir / EVIDENCE_FILE
    if evidence.exists():
        try:
            ids = [row["completion_id"] for row in json.loads(evidence.read_text())]
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"{EVIDENCE_FILE} does not parse: {error}")
        else:
            if len(ids) != len(set(ids)):
                problems.append(f"{EVIDENCE_FILE} counts {len(ids) - len(set(ids))} episodes twice")
    return TrainerDir(state, temp_dirs, problems)


def trained_ranges(checkpoints: list[CheckpointInfo]) -> dict[str, tuple[int, int]]:
    """version → (seq_after, seq_through) of each checkpoint trained on episodes."""
    ranges = {}
    for c in checkpoints:
        after, through = c.metrics.get(SEQ_AFTER), c.metrics.get(SEQ_THROUGH)
        if after is not None and through is not None and not c.metrics.get("floors_only"):
            ranges[c.version] = (int(after), int(through))
    return ranges


def episodes_twice(checkpoints: list[CheckpointInfo]) -> list[str]:
    """Each pair of checkpoints trained on some same episode, and each version whose lineage holds an
    episode twice; [] when every episode went into at most one checkpoint."""
    ranges = trained_ranges(checkpoints)
    problems = []
    versions = sorted(ranges, key=lambda v: int(v.lstrip("v")) if v.lstrip("v").isdigit() else 0)
    for i, a in enumerate(versions):
        for b in versions[i + 1 :]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            if max(a0, b0) < min(a1, b1):
                problems.append(f"episodes {max(a0, b0) + 1}..{min(a1, b1)} trained into both {a} and {b}")
    parents = {c.version: c.parent_version for c in checkpoints}
    for version in versions:
        lineage, seen, node = [], set(), version
        while node in parents and node not in seen:
            seen.add(node)
            if node in ranges:
                lineage.append(ranges[node])
            node = parents[node] or ""
        lineage.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(lineage)):
            problems.append(f"{version}: its lineage was trained on some episode twice")
    return problems


def summary_of(checkpoints: list[CheckpointInfo]) -> list[dict[str, Any]]:
    """A line per checkpoint for the report: version, state, parent, episodes."""
    ranges = trained_ranges(checkpoints)
    return [
        {
            "version": c.version,
            "state": c.state,
            "parent": c.parent_version,
            "seq": list(ranges[c.version]) if c.version in ranges else None,
            "episodes": c.metrics.get("episodes"),
        }
        for c in checkpoints
    ]
