"""Shared fixtures: a tiny model trained here, and a real backend process on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import inspect
import itertools
import os
import shutil
import subprocess
import sysconfig
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import processes
from core.local_tokens import ADMIN, CLIENT, read_token
from core.processes import free_port, stop_process

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A small, varied slice of the standard library: enough for a tiny model to learn Python's look.
CORPUS_MODULES = [
    "json",
    "email",
    "collections",
    "logging",
    "importlib",
    "http",
    "urllib",
    "csv.py",
    "textwrap.py",
    "string.py",
    "shlex.py",
    "fractions.py",
    "queue.py",
    "heapq.py",
]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_MODULES:
        source = stdlib / name
        if source.is_dir():
            shutil.copytree(source, corpus / name, ignore=shutil.ignore_patterns("test*", "__pycache__"))
        else:
            shutil.copy(source, corpus / name)
    return corpus


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """A real Llama-style model and BPE tokenizer, trained for under a minute by the test session.

    A fixed 800 steps with a step-based schedule, so every session gets the same model however busy
    the machine (a time budget gave a different model, and flaky learning tests, per session); fewer
    steps leave greedy output that is mostly loops.

    FLYWHEEL_TEST_MODEL_CACHE=DIR keeps the model between sessions on a developer's machine, keyed
    by the bootstrap's source (CI never sets it): the same steps give the same model."""
    from trainer.bootstrap import build_base_model

    cache = os.environ.get("FLYWHEEL_TEST_MODEL_CACHE")
    if cache:
        source = Path(inspect.getsourcefile(build_base_model) or "").read_bytes()
        cached = Path(cache) / f"tiny-{hashlib.sha256(source).hexdigest()[:16]}"
        if (cached / "config.json").exists():
            return cached
    output = tmp_path_factory.mktemp("models") / "tiny"
    build_base_model(
        output=output,
        corpus=[tiny_corpus],
        budget_s=20,
        size="tiny",
        include_stdlib=False,
        progress=False,
        overrides={"steps": 800},
    )
    if cache:
        # Copied whole, then renamed: a session reading the cache never sees half a model.
        partial = Path(cache) / f"{cached.name}.{os.getpid()}.partial"
        shutil.copytree(output, partial)
        with contextlib.suppress(OSError):
            partial.rename(cached)
    return output


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server for the session (bench/postgres_server.py, on loopback), with a
    database `flywheel_template` already migrated (a test may copy it: CREATE DATABASE … TEMPLATE)
    and `flywheel_tests`, where each test that takes `store` gets a schema of its own."""
    from bench import postgres_server

    if postgres_server.binaries() is None:
        pytest.skip("PostgreSQL is not installed: `make test` installs Debian's postgresql")
    with postgres_server.running() as server:
        server.execute("CREATE DATABASE flywheel_template", "CREATE DATABASE flywheel_tests")
        # In a thread of its own: a test's event loop may be running in this one.
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _migrate(server.url("flywheel_template"))).result()
        yield server


async def _migrate(url: str) -> None:
    from backend.store.postgres import PostgresStore

    await (await PostgresStore.open(url, pool_size=1)).close()


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def open_store_here(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Awaitable[Any]]:
    """Opens this test's store, again and again on the same file or database: a SQLite file, or a
    fresh schema on the session's PostgreSQL server. A test that takes it (or `store`) runs on both."""
    if request.param == "sqlite":
        from backend.store.sqlite import SqliteStore

        path = tmp_path / "nested" / "dir" / "flywheel.sqlite3"
        return lambda: SqliteStore.open(path)
    from backend.store.postgres import PostgresStore

    server = request.getfixturevalue("postgres_server")
    # A schema per test, named first in the search path: a new database (even from a template)
    # cost a second a test, a schema and the migrations a fifth of that.
    name = f"test_{next(_databases)}"
    server.execute(f"CREATE SCHEMA {name}", database="flywheel_tests")
    request.addfinalizer(lambda: server.execute(f"DROP SCHEMA {name} CASCADE", database="flywheel_tests"))
    return lambda: PostgresStore.open(f"{server.url('flywheel_tests')}?options=-csearch_path%3D{name}")


@pytest.fixture
async def store(open_store_here: Callable[[], Awaitable[Any]]) -> AsyncIterator[Any]:
    """The backend's store on SQLite and on PostgreSQL (see open_store_here), closed after the test."""
    opened = await open_store_here()
    yield opened
    await opened.close()


@dataclass
class RunningBackend:
    url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def admin(self) -> dict[str, str]:
        """Headers with the admin token the backend made for this machine on its first start."""
        return bearer(read_token(self.data_dir, ADMIN))

    @property
    def client(self) -> dict[str, str]:
        """Headers with the client token the backend made for this machine on its first start."""
        return bearer(read_token(self.data_dir, CLIENT))

    @contextlib.contextmanager
    def dashboard(self) -> Iterator[httpx.Client]:
        """A browser's view: logged in to the dashboard with the admin token (a session cookie)."""
        with httpx.Client(base_url=self.url, follow_redirects=False, timeout=30) as browser:
            login = browser.post("/admin/login", data={"token": read_token(self.data_dir, ADMIN)})
            assert login.status_code == 303, login.text
            yield browser


def bearer(token: str) -> dict[str, str]:
    assert token, "no token: the backend makes its local tokens on its first start"
    return {"authorization": f"Bearer {token}"}


def backend_env(model_dir: Path, data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    # Episodes finalize within a fraction of a second, so tests need not wait for the default tick.
    # No token a developer configured for their own backend: the test's backend makes its own.
    defaults = {"FLYWHEEL_BACKEND__FINALIZE_INTERVAL_S": "0.2", "FLYWHEEL_BACKEND__TOKEN": ""}
    return processes.backend_env(model_dir, data_dir, port, **{**defaults, **extra})


def start_backend(model_dir: Path, data_dir: Path, **extra: str) -> RunningBackend:
    port = free_port()
    env = backend_env(model_dir, data_dir, port, **extra)
    log_path = data_dir / "backend.log"
    backend = RunningBackend(
        f"http://127.0.0.1:{port}", data_dir, env, processes.spawn_backend(env, log_path), log_path
    )
    processes.wait_healthy(backend.url, backend.process, log_path, timeout_s=120)
    return backend


def stop_backend(backend: RunningBackend) -> None:
    stop_process(backend.process, timeout_s=20)


@pytest.fixture
def backend(tiny_model_dir: Path, tmp_path: Path) -> Iterator[RunningBackend]:
    running = start_backend(tiny_model_dir, tmp_path / "state")
    yield running
    stop_backend(running)


# Tests that do not exercise the canary serve an upload to everyone at once (share 0: promoted on
# upload); the canary tests set their own share.
os.environ.setdefault("FLYWHEEL_CANARY__SHARE", "0")


def restart_backend(stopped: RunningBackend) -> RunningBackend:
    """The same backend again after `stop_backend`: same port, data dir and settings."""
    process = processes.spawn_backend(stopped.env, stopped.log_path)
    processes.wait_healthy(stopped.url, process, stopped.log_path, timeout_s=120)
    return RunningBackend(stopped.url, stopped.data_dir, stopped.env, process, stopped.log_path)


def make_adapter(model_dir: Path, output: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """A LoRA adapter for `model_dir` with random non-zero weights, so it changes the policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, scale)
    model.save_pretrained(output)
    return output


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real vLLM server serving the tiny model with Flywheel's flags (tests/vllm_support.py),
    shared by the session: one start costs about 35 s. Skipped without a vLLM environment."""
    import vllm_support

    if vllm_support.vllm_python_path() is None:
        pytest.skip(vllm_support.NO_VLLM)
    server = vllm_support.start_server(tiny_model_dir, tmp_path_factory.mktemp("vllm") / "server.log")
    yield server
    asyncio.run(server.stop())
