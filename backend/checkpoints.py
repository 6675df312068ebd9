"""Taking a candidate adapter in: validate it, then write it atomically under the checkpoints dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.atomic import atomic_dir
from core.wire import ADAPTER_FILES, CHECKPOINT_METADATA, CheckpointMetadata

MAX_ADAPTER_BYTES = 512 * 1024 * 1024
VERSION_PATTERN = re.compile(r"^v[0-9]+$")


class CheckpointError(ValueError):
    """An upload that cannot become a checkpoint; the message says why."""


def validate_upload(files: dict[str, bytes], metadata: CheckpointMetadata, served_base: str) -> None:
    names = set(files)
    if names != set(ADAPTER_FILES):
        raise CheckpointError(f"expected exactly the files {sorted(ADAPTER_FILES)}, got {sorted(names)}")
    if metadata.base_model != served_base:
        raise CheckpointError(
            f"adapter was trained on base model {metadata.base_model!r}, "
            f"but this backend serves {served_base!r}"
        )
    if sum(len(content) for content in files.values()) > MAX_ADAPTER_BYTES:
        raise CheckpointError(f"adapter larger than {MAX_ADAPTER_BYTES} bytes")
    try:
        config = json.loads(files["adapter_config.json"])
    except ValueError as error:
        raise CheckpointError(f"adapter_config.json is not JSON: {error}") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise CheckpointError("adapter_config.json does not describe a LoRA adapter")
    # safetensors files start with an 8-byte little-endian header length and a JSON header.
    weights = files["adapter_model.safetensors"]
    header_length = int.from_bytes(weights[:8], "little") if len(weights) >= 8 else 0
    if not 0 < header_length <= len(weights) - 8 or weights[8:9] != b"{":
        raise CheckpointError("adapter_model.safetensors is not a safetensors file")


def write_checkpoint(root: Path, version: str, files: dict[str, bytes], metadata: CheckpointMetadata) -> Path:
    """Writes into a temporary directory beside the target, then renames it into place."""
    if not VERSION_PATTERN.match(version):
        raise CheckpointError(f"bad version name {version!r}")
    target = root / version
    try:
        with atomic_dir(target) as staging:
            for name in ADAPTER_FILES:
                (staging / name).write_bytes(files[name])
            (staging / CHECKPOINT_METADATA).write_bytes(metadata.model_dump_json(indent=2).encode())
    except FileExistsError as error:
        raise CheckpointError(f"checkpoint {version} already exists") from error
    return target


def checkpoint_file(root: Path, version: str, name: str) -> Path:
    """The path of one adapter file, refusing anything but a known version and file name."""
    if not VERSION_PATTERN.match(version) or name not in ADAPTER_FILES:
        raise CheckpointError("no such checkpoint file")
    path = root / version / name
    if not path.is_file():
        raise CheckpointError("no such checkpoint file")
    return path
