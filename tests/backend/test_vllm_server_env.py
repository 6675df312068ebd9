"""The environment a vLLM server Flywheel starts gets: what the plugin and runtime LoRA loading need,
and a KV cache size on a CPU unless the machine's environment says otherwise."""

from __future__ import annotations

from backend.vllm_server import CPU_KV_CACHE_GB, TEMPERATURE_ENV, server_env


def test_a_cpu_server_gets_a_bounded_kv_cache_unless_told() -> None:
    env = server_env(0.7, "key", base={})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == CPU_KV_CACHE_GB
    assert env[TEMPERATURE_ENV] == "0.7" and env["VLLM_API_KEY"] == "key"
    assert server_env(0.7, "key", base={"VLLM_CPU_KVCACHE_SPACE": "1"})["VLLM_CPU_KVCACHE_SPACE"] == "1"
