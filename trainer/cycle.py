"""One trainer cycle: pull episodes, guard, update, gate, save atomically, upload, move the cursor.

ModelInfo → up to `max_episodes` new episodes after the persisted cursor → guards
(trainer/selection.py) → a held-out share for the gate → the live version's policy (kept in memory
between cycles) → update with the configured objective → eval gate → atomic save of the adapter,
its optimizer state and its upload metadata → upload (a failing candidate too: the backend records
it as rejected with the gate's reason) → cursor persisted.

Crash safety: the candidate directory appears whole or not at all. Before uploading, the state file
names it as pending; a trainer killed from there on asks the backend whether it arrived, and uploads
the saved candidate again if not, so no cycle is trained twice and nothing half-written is sent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Settings, TrainerConfig
from core.wire import BASE_VERSION, CheckpointInfo, CheckpointMetadata, GateResult, ModelInfo
from trainer.checkpoint import (
    UPLOAD_FILE,
    adapter_dir,
    adopt_candidate,
    clean_trainer_dir,
    is_complete,
    new_candidate_dir,
    save_adapter_atomic,
)
from trainer.client import BackendClient
from trainer.corrections import wanted_ids
from trainer.gate import GateBaseline, evaluate_candidate, sequence_logps, split_heldout
from trainer.objectives.pg import PGConfig
from trainer.replay import load_replay
from trainer.selection import select_episodes
from trainer.session import LoadedPolicy, PolicyCache
from trainer.state import TrainerState, load_state, save_state
from trainer.stopping import HindsightSet, fit_stop_logprob
from trainer.update import train_on_episodes
from trainer.withholding import fit_floors, floor_metrics

log = logging.getLogger("flywheel.trainer")

# Checkpoint metrics naming the episodes a candidate was trained on: seq_after < seq <= seq_through.
SEQ_AFTER, SEQ_THROUGH = "seq_after", "seq_through"
# Below this many kept episodes none are held out: the SNIS check would have nothing to go on.
MIN_EPISODES_TO_HOLD_OUT = 20
# Windows of general code a cycle's replay term draws from (a fresh set each cycle, by its seed):
# 512 windows of 256 tokens, about 0.5 MB of code, a few seconds to read and tokenize.
REPLAY_WINDOWS = 512


@dataclass
class CycleResult:
    # The version the backend gave the uploaded candidate; None when nothing was trainable.
    version: str | None
    parent_version: str
    episodes: int
    dropped: Counter[str] = field(default_factory=Counter)
    cursor: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    gate: GateResult | None = None
    # The state the backend put the candidate in (live, canary, gated, rejected, …).
    state: str | None = None
    # When the update failed the gate but the floors moved: the version that carries the new
    # floors on the live weights, and its state.
    floors_version: str | None = None
    floors_state: str | None = None


def objective_config(cfg: TrainerConfig) -> Any:
    """The configured objective's dataclass with the configured overrides; ValueError if unknown."""
    if cfg.objective == "pg":
        return _with_overrides(PGConfig, cfg.pg)
    if cfg.objective == "kto":
        from trainer.objectives.kto import KTOObjective

        return _with_overrides(KTOObjective, cfg.kto)
    if cfg.objective == "dpo":
        from trainer.objectives.dpo import DPOObjective

        return _with_overrides(DPOObjective, cfg.dpo)
    raise ValueError(f"unknown trainer objective {cfg.objective!r} (pg, kto, dpo)")


def _with_overrides(cls: type, overrides: dict[str, Any]) -> Any:
    """cls() with `overrides`, each converted to its field's type (environment values are strings)."""
    defaults = cls()
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    return dataclasses.replace(
        defaults, **{name: type(getattr(defaults, name))(value) for name, value in overrides.items()}
    )


def update(policy: LoadedPolicy, episodes: list, objective: Any, settings: Settings, seed: int) -> dict:
    cfg = settings.trainer
    common = dict(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, epochs=cfg.epochs)
    if isinstance(objective, PGConfig):
        return train_on_episodes(
            policy.model,
            episodes,
            objective,
            seed=seed,
            optimizer=policy.optimizer,
            parent_version=policy.version,
            kl_budget=cfg.guards.kl_budget,
            measure_kl_after=False,
            wanted=[wanted_ids(policy.tokenizer, e, objective.correction_max_tokens) for e in episodes]
            if objective.correction_coef > 0
            else None,
            replay=load_replay(
                policy.tokenizer, cfg.replay_sources, objective.replay_window_tokens, REPLAY_WINDOWS, seed
            )
            if objective.replay_coef > 0
            else None,
            **common,
        )
    if cfg.objective == "kto":
        from trainer.objectives.kto import train_kto

        return train_kto(policy.model, policy.tokenizer, episodes, objective, **common)
    from trainer.objectives.dpo import train_dpo

    return train_dpo(policy.model, policy.tokenizer, episodes, objective, **common)


def ship_floors(
    client: BackendClient,
    trainer_dir: Path,
    state: TrainerState,
    policy: LoadedPolicy,
    info: ModelInfo,
    floors: dict[str, float],
    rejected: str,
) -> CheckpointInfo:
    """Uploads the live version's weights (in `policy`) with new confidence floors: the floors were
    fitted on those weights' outcomes, and do not need the update the gate refused."""
    path = new_candidate_dir(trainer_dir, info.live_version)
    metadata = CheckpointMetadata(
        base_model=info.base_model,
        parent_version=info.live_version,
        metrics={
            "candidate": path.name,
            "floors_only": 1.0,
            "rejected_update": rejected,
            **floor_metrics(floors),
        },
        gate=GateResult(passed=True, reason=f"floors only, on the weights of {info.live_version}"),
        stop_logprob=info.stop_logprob,
        min_confidence=floors,
    )
    return upload_candidate(
        client, trainer_dir, state, policy, path, metadata, policy.optimizer, state.cursor
    )


def upload_candidate(
    client: BackendClient,
    trainer_dir: Path,
    state: TrainerState,
    policy: LoadedPolicy,
    path: Path,
    metadata: CheckpointMetadata,
    optimizer: Any,
    cursor: int,
) -> CheckpointInfo:
    """Saves the candidate whole, marks it pending (with the cursor its upload completes), uploads
    it and files it under the version the backend gave it."""
    save_adapter_atomic(policy.model, path, optimizer, metadata.model_dump_json())
    state.pending_candidate, state.pending_cursor = path.name, cursor
    save_state(trainer_dir, state)
    checkpoint = client.upload_checkpoint(path, metadata)
    _finish(trainer_dir, state, path, checkpoint)
    return checkpoint


def live_adapter(client: BackendClient, trainer_dir: Path, version: str) -> Path | None:
    """The live adapter's directory, downloaded if not cached; None for the base model."""
    if version == BASE_VERSION:
        return None
    path = adapter_dir(trainer_dir, version)
    if not is_complete(path):
        log.info("downloading adapter %s", version)
        client.download_checkpoint(version, path)
    return path


def _finish(trainer_dir: Path, state: TrainerState, candidate: Path, checkpoint: CheckpointInfo) -> None:
    """After the backend took the candidate: file it under its version (unless rejected, when it is
    of no further use), move the cursor, clear the pending mark."""
    if checkpoint.state == "rejected":
        shutil.rmtree(candidate, ignore_errors=True)
    else:
        adopt_candidate(candidate, trainer_dir, checkpoint.version)
    state.cursor = state.pending_cursor
    state.last_version = checkpoint.version
    state.pending_candidate = None
    save_state(trainer_dir, state)


def resume_pending(client: BackendClient, trainer_dir: Path, state: TrainerState) -> CheckpointInfo | None:
    """Completes an upload a killed trainer left pending; None when there was none."""
    name = state.pending_candidate
    if name is None:
        return None
    candidate = trainer_dir / "candidates" / name
    arrived = [c for c in client.checkpoints() if c.metrics.get("candidate") == name]
    if arrived:
        checkpoint = arrived[-1]
        log.info("pending candidate %s had arrived as %s", name, checkpoint.version)
    elif is_complete(candidate) and (candidate / UPLOAD_FILE).is_file():
        metadata = CheckpointMetadata.model_validate_json((candidate / UPLOAD_FILE).read_text())
        checkpoint = client.upload_checkpoint(candidate, metadata)
        log.info("pending candidate %s uploaded as %s (%s)", name, checkpoint.version, checkpoint.state)
    else:
        log.warning("pending candidate %s is gone; its episodes will be trained on again", name)
        state.pending_candidate = None
        save_state(trainer_dir, state)
        return None
    _finish(trainer_dir, state, candidate, checkpoint)
    return checkpoint


def run_cycle(
    settings: Settings,
    client: BackendClient | None = None,
    *,
    min_episodes: int = 1,
    pg: PGConfig | None = None,
    cache: PolicyCache | None = None,
    on_state: Callable[[str], None] | None = None,
) -> CycleResult | None:
    """One cycle; None (and nothing changed) when fewer than `min_episodes` new episodes are in,
    the guards want more distinct users first, or a canary is still being judged."""
    if client is None:
        with BackendClient.from_settings(settings) as own:
            return run_cycle(settings, own, min_episodes=min_episodes, pg=pg, cache=cache, on_state=on_state)
    started = time.monotonic()
    cfg = settings.trainer
    trainer_dir = settings.trainer_dir
    cache = cache or PolicyCache(cfg)
    notify = on_state or (lambda _state: None)
    state = load_state(trainer_dir)
    resume_pending(client, trainer_dir, state)
    info = client.model_info()
    if info.canary_version is not None:
        # One experiment at a time: a new candidate would retire the canary before its verdict,
        # and a trainer cycling faster than a canary can decide would never ship anything.
        log.info("waiting for the verdict on canary %s", info.canary_version)
        return None
    episodes, next_cursor = client.all_episodes(state.cursor, max_count=cfg.max_episodes)
    if len(episodes) < max(min_episodes, 1):
        return None

    selection = select_episodes(episodes, info.live_version, cfg.guards)
    result = CycleResult(None, info.live_version, len(selection.kept), selection.dropped, next_cursor)
    if selection.dropped.get("too_few_users"):
        log.info(
            "waiting for more users: %d of %d needed",
            len({e.user_id for e in episodes}),
            cfg.guards.min_users,
        )
        return None
    if not selection.kept:
        # Nothing here can ever be trained on: step over it rather than pull it again forever.
        state.cursor = next_cursor
        save_state(trainer_dir, state)
        log.info("cycle skipped: all %d new episodes dropped (%s)", len(episodes), dict(selection.dropped))
        return result

    held = cfg.gate.enabled and len(selection.kept) >= MIN_EPISODES_TO_HOLD_OUT
    train, heldout = split_heldout(selection.kept, cfg.gate.heldout_share) if held else (selection.kept, [])
    objective = pg if pg is not None else objective_config(cfg)
    notify("training")
    policy = cache.get(
        info.base_model, info.live_version, live_adapter(client, trainer_dir, info.live_version)
    )
    baseline = None
    if cfg.gate.enabled:
        baseline = GateBaseline(sequence_logps(policy.model, heldout), *cache.base_figures(policy, cfg.gate))
    log.info(
        "training %s on %d episodes (%d held out, %d dropped) from %s",
        cfg.objective,
        len(train),
        len(heldout),
        sum(selection.dropped.values()),
        info.live_version,
    )
    # The live weights, kept so that floors fitted on their outcomes can ship on them when the
    # update fails the gate.
    live_weights = policy.snapshot() if cfg.learn_floor else None
    metrics = update(policy, train, objective, settings, seed=next_cursor)
    cache.became(None)  # the weights in memory are now the candidate's, no served version
    metrics.update(episodes=float(len(train)), heldout=float(len(heldout)))
    metrics.update({f"dropped_{reason}": float(n) for reason, n in selection.dropped.items()})
    metrics["dropped"] = float(sum(selection.dropped.values()))

    stop_logprob = info.stop_logprob
    if cfg.learn_stop:
        fit = fit_stop_logprob(policy.tokenizer, train, settings.rewards, info.stop_logprob)
        stop_logprob = fit.stop_logprob
        metrics.update(stop_kept_chars=fit.chosen.kept_chars, stop_kept_chars_uncut=fit.uncut.kept_chars)
        if heldout:
            held = HindsightSet(policy.tokenizer, heldout, settings.rewards)
            before, after = held.estimate(info.stop_logprob), held.estimate(stop_logprob)
            metrics["stop_heldout_kept_chars_gain"] = after.kept_chars - before.kept_chars
            metrics["stop_heldout_reward_gain"] = after.reward - before.reward
    if stop_logprob is not None:
        metrics["stop_logprob"] = stop_logprob
    min_confidence = info.min_confidence
    if cfg.learn_floor:
        min_confidence = fit_floors(
            trainer_dir,
            train,
            heldout,
            info.min_confidence,
            settings.rewards,
            metrics,
            history=cfg.floor_history,
            min_shown=cfg.floor_min_shown,
        )

    gate = None
    if baseline is not None:
        notify("gating")
        gate = evaluate_candidate(policy.model, policy.tokenizer, heldout, baseline, cfg.gate)
    candidate_path = new_candidate_dir(trainer_dir, info.live_version)
    metrics["duration_s"] = time.monotonic() - started
    metadata = CheckpointMetadata(
        base_model=info.base_model,
        parent_version=info.live_version,
        # The episodes it was trained on, seq_after < seq <= seq_through: what a fault check reads
        # to tell that no episode went into one lineage twice.
        metrics={
            **metrics,
            "candidate": candidate_path.name,
            "objective": cfg.objective,
            SEQ_AFTER: state.cursor,
            SEQ_THROUGH: next_cursor,
        },
        gate=gate,
        stop_logprob=stop_logprob,
        min_confidence=min_confidence,
    )
    optimizer = policy.optimizer if isinstance(objective, PGConfig) else None
    notify("uploading")
    checkpoint = upload_candidate(
        client, trainer_dir, state, policy, candidate_path, metadata, optimizer, next_cursor
    )
    if checkpoint.state != "rejected" and (gate is None or gate.passed):
        cache.became(checkpoint.version)
    clean_trainer_dir(trainer_dir, keep={info.live_version, checkpoint.version})
    metrics["duration_s"] = time.monotonic() - started
    result.version, result.metrics, result.gate, result.state = (
        checkpoint.version,
        metrics,
        gate,
        checkpoint.state,
    )
    log.info(
        "cycle done: %s → %s (%s) | episodes %d held out %d dropped %s | mean reward %+.3f | loss %.4f "
        "kl %.4f parent kl %.4f%s | gate %s | %.1fs",
        info.live_version,
        checkpoint.version,
        checkpoint.state,
        len(train),
        len(heldout),
        json.dumps(dict(selection.dropped)),
        metrics.get("mean_reward", 0.0),
        metrics.get("loss", metrics.get("train_loss", 0.0)),
        metrics.get("kl", 0.0),
        metrics.get("kl_parent_max", 0.0),
        " (KL budget hit: stopped)" if metrics.get("kl_stopped") else "",
        "off" if gate is None else ("passed" if gate.passed else f"FAILED: {gate.reason}"),
        metrics["duration_s"],
    )
    if checkpoint.state == "rejected" and live_weights is not None and min_confidence != info.min_confidence:
        policy.restore(live_weights)
        floors = ship_floors(client, trainer_dir, state, policy, info, min_confidence, checkpoint.version)
        log.info(
            "floors %s shipped on the live weights as %s (%s)", min_confidence, floors.version, floors.state
        )
        if floors.state != "rejected":
            cache.became(floors.version)
        result.floors_version, result.floors_state = floors.version, floors.state
    return result
