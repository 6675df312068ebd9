"""One trainer cycle, as named phases, each a function that returns what it found:

    resume_pending   finish the upload a killed trainer left pending
    pull             the live version and up to `max_episodes` new episodes after the cursor
    select           the guards (trainer/selection.py), then a held-out share for the gate
    update_policy    the live version's policy (kept in memory between cycles) updated with the
                     configured objective (trainer/objectives/)
    fit_cut          where serving cuts the candidate's completions (trainer/stopping.py)
    fit_floors       the candidate's confidence floors (trainer/withholding.py)
    fit_show_policy  the candidate's learned show-or-abstain policy (trainer/show_policy_fit.py)
    gate             the eval gate on the held-out episodes (trainer/gate.py), and the show
                     policy's check on them
    upload_update    atomic save of the adapter, its optimizer state and its upload metadata, then
                     the upload (a failing candidate too: the backend records it as rejected with
                     the gate's reason), then the cursor
    ship_floors      when the gate refused the update but the floors or the show policy moved:
                     they alone, on the live weights

`run_cycle` runs them in that order and returns a CycleReport (trainer/report.py).

Crash safety: the candidate directory appears whole or not at all. Before uploading, the state file
names it as pending; a trainer killed from there on asks the backend whether it arrived, and uploads
the saved candidate again if not, so no cycle is trained twice and nothing half-written is sent.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.config import Settings, TrainerConfig
from core.show_policy import ShowPolicy
from core.wire import BASE_VERSION, CheckpointInfo, CheckpointMetadata, Episode, GateResult, ModelInfo
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
from trainer.distributed import ALONE, Job, World, to_cpu
from trainer.gate import GateBaseline, evaluate_candidate, measure_parent, sequence_logps, split_heldout
from trainer.heldout_carry import load_carry, save_carry
from trainer.objectives import objective_config
from trainer.objectives.pg import PGConfig
from trainer.progress import Progress
from trainer.replay import load_replay
from trainer.report import (
    CANDIDATE,
    FLOORS_ONLY,
    SEQ_AFTER,
    SEQ_THROUGH,
    CutReport,
    CycleReport,
    Floors,
    ShowPolicyReport,
    UpdateReport,
    floor_metrics,
    show_policy_metrics,
)
from trainer.selection import malformed, select_episodes
from trainer.session import LoadedPolicy, PolicyCache
from trainer.show_policy_fit import fit_policy
from trainer.state import TrainerState, load_state, save_state
from trainer.stopping import HindsightSet, fit_stop_logprob
from trainer.update import train_on_episodes
from trainer.withholding import fit_floors

__all__ = ["MIN_EPISODES_TO_HOLD_OUT", "SEQ_AFTER", "SEQ_THROUGH", "CycleReport", "run_cycle"]

log = logging.getLogger("flywheel.trainer")

# Below this many kept episodes none are held out: the SNIS check would have nothing to go on.
MIN_EPISODES_TO_HOLD_OUT = 20
# Windows of general code a cycle's replay term draws from (a fresh set each cycle, by its seed):
# 512 windows of 256 tokens, about 0.5 MB of code, a few seconds to read and tokenize.
REPLAY_WINDOWS = 512


@dataclass(frozen=True)
class Pulled:
    info: ModelInfo
    episodes: list[Episode]
    # The cursor past them: the one the cycle's upload moves to.
    cursor: int


@dataclass(frozen=True)
class Split:
    train: list[Episode]
    heldout: list[Episode]
    dropped: Counter[str]
    # The previous cycle's held-out episodes, its gate done with them: trained on, never held out.
    carried: tuple[Episode, ...] = ()


def run_cycle(
    settings: Settings,
    client: BackendClient | None = None,
    *,
    min_episodes: int = 1,
    pg: PGConfig | None = None,
    cache: PolicyCache | None = None,
    on_state: Callable[[str], None] | None = None,
    world: World = ALONE,
) -> CycleReport | None:
    """One cycle; None (and nothing changed) when fewer than `min_episodes` new episodes are in,
    the guards want more distinct users first, or a canary is still being judged.

    Under torchrun this runs on rank 0, and the other ranks of `world` join its policy update."""
    if client is None:
        with BackendClient.from_settings(settings) as own:
            return run_cycle(
                settings, own, min_episodes=min_episodes, pg=pg, cache=cache, on_state=on_state, world=world
            )
    started = time.monotonic()
    cfg, trainer_dir = settings.trainer, settings.trainer_dir
    cache = cache or PolicyCache(cfg)
    notify = on_state or (lambda _state: None)
    state = load_state(trainer_dir)
    resume_pending(client, trainer_dir, state)
    pulled = pull(client, state, cfg, min_episodes)
    split = select(pulled, cfg) if pulled is not None else None
    if pulled is None or split is None:
        return None
    info = pulled.info
    report = CycleReport(
        info.live_version, len(split.train) + len(split.heldout), split.dropped, pulled.cursor
    )
    if not report.episodes:
        # Nothing here can ever be trained on: step over it rather than pull it again forever.
        state.cursor = pulled.cursor
        save_state(trainer_dir, state)
        log.info("cycle skipped: all %d new episodes dropped (%s)", len(pulled.episodes), dict(split.dropped))
        return report

    objective = pg if pg is not None else objective_config(cfg)
    if cfg.gate.enabled and cfg.gate.train_heldout_later:
        split = replace(split, carried=tuple(load_carry(trainer_dir, state.cursor)))
    notify("training")
    policy = cache.get(
        info.base_model, info.live_version, live_adapter(client, trainer_dir, info.live_version)
    )
    baseline = gate_baseline(policy, split.heldout, cache, cfg) if cfg.gate.enabled else None
    # The live weights, kept so that floors (or a show policy) fitted on their outcomes can ship on
    # them when the update fails the gate.
    live_weights = policy.snapshot() if cfg.learn_floor or cfg.show_policy else None
    report.update = update_policy(policy, split, objective, settings, seed=pulled.cursor, world=world)
    cache.became(None)  # the weights in memory are now the candidate's, no served version
    report.cut = fit_cut(policy, split, settings, info)
    if cfg.learn_floor:
        report.floors = fit_floors(
            trainer_dir,
            split.train,
            split.heldout,
            info.min_confidence,
            settings.rewards,
            history=cfg.floor_history,
            min_shown=cfg.floor_min_shown,
        )
    if cfg.show_policy:
        report.show_policy = fit_show_policy(pulled, split, settings)
    if baseline is not None:
        notify("gating")
        report.gate = evaluate_candidate(policy.model, policy.tokenizer, split.heldout, baseline, cfg.gate)
        if report.show_policy is not None:
            report.gate, report.show_policy = judge_show_policy(report.gate, report.show_policy, info)

    notify("uploading")
    if baseline is not None and cfg.gate.train_heldout_later:
        save_carry(trainer_dir, report.cursor, split.heldout, keep=state.cursor)
    optimizer = policy.optimizer if isinstance(objective, PGConfig) else None
    checkpoint = upload_update(client, trainer_dir, state, policy, info, report, optimizer, started)
    report.version, report.state = checkpoint.version, checkpoint.state
    if checkpoint.state != "rejected" and (report.gate is None or report.gate.passed):
        cache.became(checkpoint.version)
    clean_trainer_dir(trainer_dir, keep={info.live_version, checkpoint.version})
    report.duration_s = time.monotonic() - started
    log_cycle(report)

    floors = report.floors.min_confidence if report.floors else info.min_confidence
    show_policy = report.show_policy.policy if report.show_policy else None
    moved = floors != info.min_confidence or show_policy != info.show_policy
    if checkpoint.state == "rejected" and live_weights is not None and moved:
        policy.restore(live_weights)
        shipped = ship_floors(
            client, trainer_dir, state, policy, info, floors, show_policy, checkpoint.version
        )
        log.info(
            "floors %s and show policy %s shipped on the live weights as %s (%s)",
            floors,
            "none" if show_policy is None else f"at {show_policy.threshold}",
            shipped.version,
            shipped.state,
        )
        if shipped.state != "rejected":
            cache.became(shipped.version)
        report.floors_version, report.floors_state = shipped.version, shipped.state
    return report


# --- phases, in the order run_cycle runs them ------------------------------------------------


def resume_pending(client: BackendClient, trainer_dir: Path, state: TrainerState) -> CheckpointInfo | None:
    """Completes an upload a killed trainer left pending; None when there was none."""
    name = state.pending_candidate
    if name is None:
        return None
    candidate = trainer_dir / "candidates" / name
    arrived = [c for c in client.checkpoints() if c.metrics.get(CANDIDATE) == name]
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


def pull(client: BackendClient, state: TrainerState, cfg: TrainerConfig, min_episodes: int) -> Pulled | None:
    """The live version and the episodes after the cursor; None while a canary is judged or
    fewer than `min_episodes` are in."""
    info = client.model_info()
    if info.canary_version is not None:
        # One experiment at a time: a new candidate would retire the canary before its verdict,
        # and a trainer cycling faster than a canary can decide would never ship anything.
        log.info("waiting for the verdict on canary %s", info.canary_version)
        return None
    episodes, cursor = client.all_episodes(state.cursor, max_count=cfg.max_episodes)
    if len(episodes) < max(min_episodes, 1):
        return None
    return Pulled(info, episodes, cursor)


def select(pulled: Pulled, cfg: TrainerConfig) -> Split | None:
    """The guards' choice, split into training and held-out episodes; None while the guards want
    more distinct users."""
    selection = select_episodes(pulled.episodes, pulled.info.live_version, cfg.guards)
    if selection.dropped.get("too_few_users"):
        users = len({e.user_id for e in pulled.episodes})
        log.info("waiting for more users: %d of %d needed", users, cfg.guards.min_users)
        return None
    kept = selection.kept
    if cfg.gate.enabled and len(kept) >= MIN_EPISODES_TO_HOLD_OUT:
        train, heldout = split_heldout(kept, cfg.gate.heldout_share)
        return Split(train, heldout, selection.dropped)
    return Split(kept, [], selection.dropped)


def unshown(pulled: Pulled, split: Split, cfg: TrainerConfig) -> tuple[list[Episode], list[Episode]]:
    """(train, held out) of the episodes serving decided not to show (or not to call the model
    for), of the users the guards kept: no update trains on them, but the show policy's trigger
    learns from them where the model would not have been worth calling. Held out as the shown ones
    are, by their completion id."""
    users = {e.user_id for e in (*split.train, *split.heldout)}
    withheld = [
        e
        for e in pulled.episodes
        if e.decision is not None and e.user_id in users and malformed(e) == "withheld"
    ]
    if not split.heldout:
        return withheld, []
    return split_heldout(withheld, cfg.gate.heldout_share)


def fit_show_policy(pulled: Pulled, split: Split, settings: Settings) -> ShowPolicyReport:
    """The candidate's show policy: fitted on the evidence of this and earlier cycles, the live
    version's kept while the evidence is too thin or nothing beats its rule."""
    cfg = settings.trainer
    train, heldout = unshown(pulled, split, cfg)
    return fit_policy(
        settings.trainer_dir,
        [*split.train, *train],
        [*split.heldout, *heldout],
        pulled.info.show_policy,
        pulled.info.min_confidence,
        settings.rewards,
        explore=cfg.show_policy_explore,
        history=cfg.show_policy_history,
        min_shown=cfg.show_policy_min_shown,
    )


def judge_show_policy(
    gate: GateResult, fitted: ShowPolicyReport, info: ModelInfo
) -> tuple[GateResult, ShowPolicyReport]:
    """The gate's check of a new show policy on the held-out episodes, recorded among its figures. A
    policy they say loses characters (trainer/show_policy_fit.py HeldoutCheck) is not shipped (the
    live version's rule goes with the candidate instead); the weights are judged on their own."""
    figures = fitted.gate_figures()
    if not figures:
        return gate, fitted
    gate = gate.model_copy(update={"figures": {**gate.figures, **figures}})
    if figures["show_policy_passed"]:
        return gate, fitted
    log.info(
        "show policy refused: on the held-out episodes it keeps %.2f characters a request, live %.2f",
        fitted.heldout_kept_chars_after,
        fitted.heldout_kept_chars_before,
    )
    return gate, replace(fitted, policy=info.show_policy, changed=False, refused=True)


def gate_baseline(
    policy: LoadedPolicy, heldout: list[Episode], cache: PolicyCache, cfg: TrainerConfig
) -> GateBaseline:
    """What the gate compares the candidate with, measured on the live weights before the update."""
    return GateBaseline(
        sequence_logps(policy.model, heldout),
        *cache.base_figures(policy, cfg.gate),
        parent_windows=measure_parent(policy.model, policy.tokenizer, cfg.gate),
    )


def update_policy(
    policy: LoadedPolicy, split: Split, objective: Any, settings: Settings, seed: int, world: World = ALONE
) -> UpdateReport:
    """Updates the policy in place on the training episodes with the objective; the PG objective
    data-parallel over `world`'s ranks, the others on this process alone."""
    cfg = settings.trainer
    log.info(
        "training %s on %d episodes (%d of them the last cycle's held out; %d held out, %d dropped) from %s",
        cfg.objective,
        len(split.train) + len(split.carried),
        len(split.carried),
        len(split.heldout),
        sum(split.dropped.values()),
        policy.version,
    )
    episodes = [*split.train, *split.carried]
    common = dict(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, epochs=cfg.epochs)
    if isinstance(objective, PGConfig):
        wanted = None
        if objective.correction_coef > 0:
            wanted = [wanted_ids(policy.tokenizer, e, objective.correction_max_tokens) for e in episodes]
        replay = None
        if objective.replay_coef > 0 or objective.replay_kl_coef > 0:
            replay = load_replay(
                policy.tokenizer, cfg.replay_sources, objective.replay_window_tokens, REPLAY_WINDOWS, seed
            )
        job = dict(
            episodes=episodes,
            config=objective,
            seed=seed,
            parent_version=policy.version,
            kl_budget=cfg.guards.kl_budget,
            measure_kl_after=False,
            wanted=wanted,
            replay=replay,
            **common,
        )
        if world.size > 1:
            weights, optimizer_state = policy.snapshot()
            lora = policy.model.peft_config["default"]
            world.send(Job(policy.base_model, lora, to_cpu(weights), to_cpu(optimizer_state), job))
        steps = cfg.epochs * math.ceil(len(episodes) / cfg.batch_size)
        with Progress(f"update on {len(episodes)} episodes", steps) as progress:
            figures = train_on_episodes(
                policy.model, optimizer=policy.optimizer, world=world, progress=progress, **job
            )
    elif world.size > 1:
        raise ValueError(f"trainer.objective {cfg.objective!r} runs on one process; under torchrun only pg")
    elif cfg.objective == "kto":
        from trainer.objectives.kto import train_kto

        figures = train_kto(policy.model, policy.tokenizer, episodes, objective, **common)
    else:
        from trainer.objectives.dpo import train_dpo

        figures = train_dpo(policy.model, policy.tokenizer, episodes, objective, **common)
    figures = {**figures, "heldout_carried": float(len(split.carried))}
    return UpdateReport(cfg.objective, len(episodes), len(split.heldout), figures)


def fit_cut(policy: LoadedPolicy, split: Split, settings: Settings, info: ModelInfo) -> CutReport:
    """The candidate's cut: the live one's, or with `trainer.learn_stop` the one fitted in hindsight
    on the training episodes (and what it would gain on the held-out ones)."""
    if not settings.trainer.learn_stop:
        return CutReport(info.stop_logprob)
    fit = fit_stop_logprob(policy.tokenizer, split.train, settings.rewards, info.stop_logprob)
    report = CutReport(fit.stop_logprob, fit.chosen.kept_chars, fit.uncut.kept_chars)
    if not split.heldout:
        return report
    held = HindsightSet(policy.tokenizer, split.heldout, settings.rewards)
    before, after = held.estimate(info.stop_logprob), held.estimate(fit.stop_logprob)
    return CutReport(
        fit.stop_logprob,
        report.kept_chars,
        report.kept_chars_uncut,
        heldout_kept_chars_gain=after.kept_chars - before.kept_chars,
        heldout_reward_gain=after.reward - before.reward,
    )


def upload_update(
    client: BackendClient,
    trainer_dir: Path,
    state: TrainerState,
    policy: LoadedPolicy,
    info: ModelInfo,
    report: CycleReport,
    optimizer: Any,
    started: float,
) -> CheckpointInfo:
    """The updated adapter as a candidate, with the cycle's figures and verdicts, uploaded."""
    path = new_candidate_dir(trainer_dir, info.live_version)
    report.duration_s = time.monotonic() - started
    assert report.update is not None and report.cut is not None
    metadata = CheckpointMetadata(
        base_model=info.base_model,
        parent_version=info.live_version,
        # The episodes it was trained on, seq_after < seq <= seq_through: what a fault check reads
        # to tell that no episode went into one lineage twice. Besides them, the previous cycle's
        # held-out ones (`heldout_carried`), which no version was trained on before.
        metrics={
            **report.metrics(),
            CANDIDATE: path.name,
            "objective": report.update.objective,
            SEQ_AFTER: state.cursor,
            SEQ_THROUGH: report.cursor,
        },
        gate=report.gate,
        stop_logprob=report.cut.stop_logprob,
        min_confidence=report.floors.min_confidence if report.floors else info.min_confidence,
        show_policy=report.show_policy.policy if report.show_policy else None,
    )
    return upload_candidate(client, trainer_dir, state, policy, path, metadata, optimizer, report.cursor)


def ship_floors(
    client: BackendClient,
    trainer_dir: Path,
    state: TrainerState,
    policy: LoadedPolicy,
    info: ModelInfo,
    floors: Floors,
    show_policy: ShowPolicy | None,
    rejected: str,
) -> CheckpointInfo:
    """Uploads the live version's weights (in `policy`) with new confidence floors and show policy:
    they were fitted on those weights' outcomes, and do not need the update the gate refused."""
    path = new_candidate_dir(trainer_dir, info.live_version)
    metadata = CheckpointMetadata(
        base_model=info.base_model,
        parent_version=info.live_version,
        metrics={
            CANDIDATE: path.name,
            FLOORS_ONLY: 1.0,
            "rejected_update": rejected,
            **floor_metrics(floors),
            **show_policy_metrics(show_policy),
        },
        gate=GateResult(passed=True, reason=f"floors only, on the weights of {info.live_version}"),
        stop_logprob=info.stop_logprob,
        min_confidence=floors,
        show_policy=show_policy,
    )
    return upload_candidate(
        client, trainer_dir, state, policy, path, metadata, policy.optimizer, state.cursor
    )


# --- what the phases share -------------------------------------------------------------------


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


def log_cycle(report: CycleReport) -> None:
    assert report.update is not None
    figures, gate = report.update.figures, report.gate
    log.info(
        "cycle done: %s → %s (%s) | episodes %d held out %d dropped %s | mean reward %+.3f | loss %.4f "
        "kl %.4f parent kl %.4f%s | gate %s | %.1fs",
        report.parent_version,
        report.version,
        report.state,
        report.trained_on,
        report.heldout,
        json.dumps(dict(report.dropped)),
        figures.get("mean_reward", 0.0),
        figures.get("loss", figures.get("train_loss", 0.0)),
        figures.get("kl", 0.0),
        figures.get("kl_parent_max", 0.0),
        " (KL budget hit: stopped)" if figures.get("kl_stopped") else "",
        "off" if gate is None else ("passed" if gate.passed else f"FAILED: {gate.reason}"),
        report.duration_s,
    )
