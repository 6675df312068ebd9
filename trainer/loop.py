"""`flywheel trainer`: pull finalized episodes, update the live adapter, upload a candidate.

A cycle: ModelInfo → new episodes after the persisted cursor → selection → the live version's
adapter (downloaded once into the trainer dir; a fresh LoRA when live is the base model) → PG
update → atomic save → upload → cursor persisted. The cursor moves only after the upload
succeeded, so a crash or a refused upload means the same episodes are trained on again.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from backend.wire import BASE_VERSION, CheckpointMetadata
from flywheel.config import Settings
from trainer.checkpoint import (
    adapter_dir,
    adopt_candidate,
    is_complete,
    new_candidate_dir,
    save_adapter_atomic,
)
from trainer.client import BackendClient
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy, resolve_device
from trainer.selection import select_episodes
from trainer.state import load_state, save_state
from trainer.update import train_on_episodes

log = logging.getLogger("flywheel.trainer")


@dataclass
class CycleResult:
    # The version the backend gave the uploaded candidate; None when nothing was trainable.
    version: str | None
    parent_version: str
    episodes: int
    dropped: Counter[str] = field(default_factory=Counter)
    cursor: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def live_adapter(client: BackendClient, trainer_dir: Path, version: str) -> Path | None:
    """The live adapter's directory, downloaded if not cached; None for the base model."""
    if version == BASE_VERSION:
        return None
    path = adapter_dir(trainer_dir, version)
    if not is_complete(path):
        log.info("downloading adapter %s", version)
        client.download_checkpoint(version, path)
    return path


def run_cycle(
    settings: Settings,
    client: BackendClient | None = None,
    *,
    min_episodes: int = 1,
    pg: PGConfig | None = None,
) -> CycleResult | None:
    """One cycle; None (and nothing changed) when fewer than `min_episodes` new episodes are in."""
    if client is None:
        with BackendClient.from_settings(settings) as own:
            return run_cycle(settings, own, min_episodes=min_episodes, pg=pg)
    started = time.monotonic()
    cfg = settings.trainer
    trainer_dir = settings.trainer_dir
    state = load_state(trainer_dir)
    info = client.model_info()
    episodes, next_cursor = client.all_episodes(state.cursor)
    if len(episodes) < max(min_episodes, 1):
        return None

    selection = select_episodes(episodes, info.live_version)
    result = CycleResult(
        version=None,
        parent_version=info.live_version,
        episodes=len(selection.kept),
        dropped=selection.dropped,
        cursor=next_cursor,
    )
    if not selection.kept:
        # Nothing here can ever be trained on: step over it rather than pull it again forever.
        state.cursor = next_cursor
        save_state(trainer_dir, state)
        log.info("cycle skipped: all %d new episodes dropped (%s)", len(episodes), dict(selection.dropped))
        return result

    parent_dir = live_adapter(client, trainer_dir, info.live_version)
    model = load_policy(info.base_model, parent_dir, cfg, resolve_device(cfg.device))
    metrics = train_on_episodes(
        model,
        selection.kept,
        pg or PGConfig(),
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        seed=next_cursor,
    )
    metrics["episodes"] = float(len(selection.kept))
    metrics["dropped"] = float(sum(selection.dropped.values()))

    candidate = save_adapter_atomic(model, new_candidate_dir(trainer_dir, info.live_version))
    del model
    metrics["duration_s"] = time.monotonic() - started
    try:
        checkpoint = client.upload_checkpoint(
            candidate,
            CheckpointMetadata(base_model=info.base_model, parent_version=info.live_version, metrics=metrics),
        )
    except BaseException:
        # The episodes stay behind the cursor and will be trained on again; this copy is useless.
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    adopt_candidate(candidate, trainer_dir, checkpoint.version)

    state.cursor = next_cursor
    state.last_version = checkpoint.version
    save_state(trainer_dir, state)
    result.version = checkpoint.version
    result.metrics = metrics
    log.info(
        "cycle done: %s → %s (%s) | episodes %d dropped %d | mean reward %+.3f | loss %.4f pg %.4f "
        "kl %.4f (after %.4f) ratio %.3f clip %.3f | %.1fs",
        info.live_version,
        checkpoint.version,
        checkpoint.state,
        len(selection.kept),
        metrics["dropped"],
        metrics["mean_reward"],
        metrics["loss"],
        metrics["pg_loss"],
        metrics["kl"],
        metrics["kl_after"],
        metrics["ratio_mean"],
        metrics["clip_frac"],
        metrics["duration_s"],
    )
    return result


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, once: bool = False, client: BackendClient | None = None) -> int:
    """`flywheel trainer [--once]`. Exit status: 0 done or stopped, 1 backend unreachable in --once."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.trainer.objective != "pg":
        log.error("objective %r is not available (only pg)", settings.trainer.objective)
        return 2
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        # `flywheel up` stops the trainer with SIGTERM: leave as cleanly as on Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    own = client is None
    client = client or BackendClient.from_settings(settings)
    try:
        return _run_once(settings, client) if once else _run_forever(settings, client)
    except KeyboardInterrupt:
        log.info("trainer stopped")
        return 0 if not once else 130
    finally:
        if own:
            client.close()
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run_once(settings: Settings, client: BackendClient) -> int:
    try:
        result = run_cycle(settings, client, min_episodes=1)
    except httpx.HTTPError as error:
        log.error("backend at %s: %s", settings.backend.base_url, error)
        return 1
    if result is None:
        log.info("no new episodes to train on")
    return 0


def _run_forever(settings: Settings, client: BackendClient) -> int:
    cfg = settings.trainer
    last_cycle = time.monotonic()
    log.info("trainer polling %s every %.0fs", settings.backend.base_url, cfg.poll_s)
    while True:
        # Train once min_episodes are in, or on whatever is in once interval_s has passed.
        due = time.monotonic() - last_cycle >= cfg.interval_s
        try:
            result = run_cycle(settings, client, min_episodes=1 if due else cfg.min_episodes)
        except httpx.HTTPError as error:
            log.warning("backend at %s: %s; retrying in %.0fs", settings.backend.base_url, error, cfg.poll_s)
            result = None
        if result is not None:
            last_cycle = time.monotonic()
        time.sleep(cfg.poll_s)
