"""The real backend and trainer as separate processes, and what the simulation reads back over HTTP.

The backend gets a data directory of its own under the output directory (its own SQLite store and
checkpoints), so a simulation never touches the installation's real data. Settings go through
FLYWHEEL_* variables: time-related ones shrunk so a round costs seconds, candidates promoted on
upload (canary share 0) so each cycle's adapter is what the next round is served.

Evaluation rounds mark their requests (the language server's `evaluation` option sets
CompleteRequest.evaluation): the backend scores them like any other and keeps them out of the
trainer's episodes; the simulation reads them back with `include_evaluation`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from core.config import TrainerConfig, load_settings
from core.local_tokens import ADMIN, read_token
from core.processes import spawn_backend, stop_process, wait_healthy
from core.wire import SIMULATION_PATH, TOKENS_PATH, SimulationReport

HEALTH_TIMEOUT_S = 180.0
MAX_USER_SHARE = "FLYWHEEL_TRAINER__GUARDS__MAX_USER_SHARE"


def simulation_env(model: Path, data_dir: Path, port: int, window_s: float) -> dict[str, str]:
    """The environment of every process of the simulation (backend, trainer, language servers).
    Settings the user exported (say FLYWHEEL_TRAINER__LEARNING_RATE) pass through; the ones the
    simulation depends on are forced."""
    url = f"http://127.0.0.1:{port}"
    return dict(
        os.environ,
        FLYWHEEL_DATA_DIR=str(data_dir),
        FLYWHEEL_MODEL__NAME=str(model),
        FLYWHEEL_BACKEND__HOST="127.0.0.1",
        FLYWHEEL_BACKEND__PORT=str(port),
        FLYWHEEL_BACKEND__URL=url,
        # A private backend on loopback: the trainer uses the admin token it leaves in its data
        # directory, whatever the user's flywheel.toml says; each developer gets a token of their own.
        FLYWHEEL_BACKEND__TOKEN="",
        FLYWHEEL_BACKEND__FINALIZE_INTERVAL_S="0.2",
        FLYWHEEL_CANARY__SHARE="0",
        # No post-promotion watch: it compares a version's live period with its predecessor's, and
        # here those alternate populations (training rounds with adversaries, evaluation rounds
        # without), which it would read as a regression.
        FLYWHEEL_CANARY__WATCH_EPISODES="0",
        FLYWHEEL_EPISODES__WINDOW_S=str(window_s),
        FLYWHEEL_TRAINER__MIN_EPISODES="1",
        # A team of three or four: under the default cap (a quarter of an update per user) three
        # honest developers, a third each by construction, lost a third of their episodes a cycle.
        # An exported cap wins (a poisoning run may want the default one back).
        **{MAX_USER_SHARE: os.environ.get(MAX_USER_SHARE, "0.5")},
    )


def trainer_config(env: dict[str, str]) -> TrainerConfig:
    """The trainer's settings as its process reads them from `env`: this process's settings (the
    same environment and files) with the per-person cap the simulation sets."""
    config = load_settings().trainer
    guards = config.guards.model_copy(update={"max_user_share": float(env[MAX_USER_SHARE])})
    return config.model_copy(update={"guards": guards})


class Backend:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.url = env["FLYWHEEL_BACKEND__URL"]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30.0)

    def start(self) -> None:
        self.process = spawn_backend(self.env, self.log_path)
        wait_healthy(self.url, self.process, self.log_path, HEALTH_TIMEOUT_S)
        # Made by the backend on its first start, for this machine's own tools.
        admin = read_token(Path(self.env["FLYWHEEL_DATA_DIR"]), ADMIN)
        self.http.headers["authorization"] = f"Bearer {admin}"

    def create_token(self, name: str) -> tuple[str, str]:
        """A client token for one simulated developer: the token and the person it stands for."""
        made = self.http.post(TOKENS_PATH, json={"name": name}).raise_for_status().json()
        return made["token"], made["person"]

    def stop(self) -> None:
        self.http.close()
        if self.process is not None:
            stop_process(self.process)

    def report(self, report: SimulationReport) -> None:
        """The figures so far, for the dashboard."""
        self.http.post(
            SIMULATION_PATH,
            content=report.model_dump_json(),
            headers={"content-type": "application/json"},
            timeout=5.0,
        ).raise_for_status()

    # -- figures -----------------------------------------------------------------------------

    def live_version(self) -> str:
        return self.http.get("/v1/model").raise_for_status().json()["live_version"]

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.http.get("/v1/checkpoints").raise_for_status().json()

    def episodes_between(
        self, after: int, include_evaluation: bool = True
    ) -> tuple[list[dict[str, Any]], int]:
        """Trainable episodes with seq > `after` (all pages), and the cursor past them: evaluation
        ones too, unless `include_evaluation` is False (then: the episodes the trainer reads)."""
        episodes: list[dict[str, Any]] = []
        cursor = after
        params: dict[str, Any] = {"limit": 1000, "include_evaluation": include_evaluation}
        while True:
            body = self.http.get("/v1/episodes", params={**params, "cursor": cursor}).raise_for_status()
            page = body.json()
            episodes.extend(page["episodes"])
            if page["next_cursor"] == cursor:
                return episodes, cursor
            cursor = page["next_cursor"]

    def wait_for_episodes(
        self, after: int, completion_ids: set[str], timeout_s: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Wait until every shown completion of a round has become a finalized episode (or
        `timeout_s` passes: an episode too briefly visible is never trainable), then return the
        round's episodes and the cursor past them."""
        deadline = time.monotonic() + timeout_s
        while True:
            episodes, cursor = self.episodes_between(after)
            missing = completion_ids - {e["completion_id"] for e in episodes}
            if not missing or time.monotonic() > deadline:
                return episodes, cursor
            time.sleep(0.3)


def run_trainer_cycle(env: dict[str, str], log_path: Path, timeout_s: float = 1800.0) -> int:
    """`flywheel trainer --once` as its own process, logging to `log_path`; returns its exit code."""
    with open(log_path, "ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "trainer", "--once"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
    return done.returncode
