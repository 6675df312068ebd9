"""The environment a vLLM server Flywheel starts gets: what the plugin and runtime LoRA loading need,
a KV cache size on a CPU unless the machine's environment says otherwise, and its dtype."""

from __future__ import annotations

import sys

from vllm_support import needs_vllm, vllm_python_path

from backend.vllm_server import (
    CPU_KV_CACHE_GB,
    TEMPERATURE_ENV,
    is_cpu_build,
    server_command,
    server_dtype,
    server_env,
)
from core.config import ServingConfig


def test_a_cpu_server_gets_a_bounded_kv_cache_unless_told() -> None:
    env = server_env(0.7, "key", base={})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == CPU_KV_CACHE_GB
    assert env[TEMPERATURE_ENV] == "0.7" and env["VLLM_API_KEY"] == "key"
    assert server_env(0.7, "key", base={"VLLM_CPU_KVCACHE_SPACE": "1"})["VLLM_CPU_KVCACHE_SPACE"] == "1"


@needs_vllm
def test_auto_is_float32_on_vllms_cpu_build_and_a_chosen_dtype_is_kept() -> None:
    python = vllm_python_path()
    assert python is not None
    # What the environment holds, read from its installed distributions (`make vllm-env`'s default
    # is the CPU build; a CUDA machine's holds `vllm`).
    cpu = any(python.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))
    assert is_cpu_build(python) == cpu
    expected = "float32" if cpu else "auto"
    assert server_dtype(python, ServingConfig()) == expected
    assert server_dtype(python, ServingConfig(vllm_dtype="bfloat16")) == "bfloat16"
    command = server_command(python, "m", 8000, ServingConfig(), 16, server_dtype(python, ServingConfig()))
    assert command[command.index("--dtype") + 1] == expected


def test_auto_is_left_to_vllm_where_the_environment_is_not_its_cpu_build() -> None:
    # This project's environment holds no vLLM at all: as a GPU build's, its "auto" is vLLM's.
    assert not is_cpu_build(sys.executable)
    assert server_dtype(sys.executable, ServingConfig()) == "auto"
    command = server_command(sys.executable, "m", 8000, ServingConfig(), 16)
    assert command[command.index("--dtype") + 1] == "auto"
