"""`flywheel trainer [--once]`: cycles (trainer/cycle.py) once, or continuously on a trigger.

Continuous mode runs a cycle once `min_episodes` new episodes are in, or on whatever is in once
`interval_s` has passed. The policy stays in memory between cycles. Each cycle's state and figures
go to the log and, as a TrainerReport, to the backend for the dashboard.

Under `torchrun --nproc_per_node N` rank 0 runs the cycles as above and ranks 1..N-1 `follow`: they
take part in each policy update and nothing else (trainer/distributed.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import httpx
import torch

from core.config import Settings
from core.wire import TrainerReport
from trainer.client import BackendClient
from trainer.cycle import run_cycle
from trainer.distributed import ALONE, Job, World, join, leave
from trainer.objectives import objective_config
from trainer.policy import load_policy
from trainer.report import CycleReport
from trainer.session import PolicyCache
from trainer.update import make_optimizer, train_on_episodes

__all__ = ["CycleReport", "run", "run_cycle"]

log = logging.getLogger("flywheel.trainer")


def report_cycle(client: BackendClient, report: CycleReport | None, message: str = "") -> None:
    cycle = report.status() if report is not None else {}
    client.report(TrainerReport(state="idle", at=time.time(), message=message, cycle=cycle))


def _cycle(
    settings: Settings, client: BackendClient, cache: PolicyCache, min_episodes: int, world: World
) -> CycleReport | None:
    def on_state(state: str) -> None:
        client.report(TrainerReport(state=state, at=time.time()))

    result = run_cycle(
        settings, client, min_episodes=min_episodes, cache=cache, on_state=on_state, world=world
    )
    if result is not None:
        report_cycle(client, result)
    return result


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, once: bool = False, client: BackendClient | None = None) -> int:
    """`flywheel trainer [--once]`. Exit status: 0 done or stopped, 1 backend unreachable in --once."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        objective_config(settings.trainer)
    except (ValueError, TypeError) as error:
        log.error("trainer configuration: %s", error)
        return 2
    world = join(settings.trainer.device)
    if world.size > 1 and settings.trainer.objective != "pg":
        objective = settings.trainer.objective
        log.error("trainer.objective %r runs on one process; under torchrun only pg", objective)
        leave(world)
        return 2
    if not world.is_main:
        try:
            return follow(settings, world)
        finally:
            leave(world)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        # `flywheel up` stops the trainer with SIGTERM: leave as cleanly as on Ctrl-C.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    own = client is None
    client = client or BackendClient.from_settings(settings)
    try:
        return _run_once(settings, client, world) if once else _run_forever(settings, client, world)
    except KeyboardInterrupt:
        log.info("trainer stopped")
        return 0 if not once else 130
    finally:
        world.send(None)  # the other ranks stop too
        leave(world)
        if own:
            client.close()
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run_once(settings: Settings, client: BackendClient, world: World = ALONE) -> int:
    try:
        result = _cycle(settings, client, PolicyCache(settings.trainer), min_episodes=1, world=world)
    except httpx.HTTPError as error:
        log.error("backend at %s: %s", settings.backend.base_url, error)
        return 1
    if result is None:
        log.info("no new episodes to train on")
    return 0


def _run_forever(settings: Settings, client: BackendClient, world: World = ALONE) -> int:
    cfg = settings.trainer
    cache = PolicyCache(cfg)
    last_cycle = time.monotonic()
    log.info("trainer polling %s every %.0fs", settings.backend.base_url, cfg.poll_s)
    while True:
        # Train once min_episodes are in, or on whatever is in once interval_s has passed.
        due = time.monotonic() - last_cycle >= cfg.interval_s
        try:
            result = _cycle(settings, client, cache, min_episodes=1 if due else cfg.min_episodes, world=world)
        except httpx.HTTPError as error:
            log.warning("backend at %s: %s; retrying in %.0fs", settings.backend.base_url, error, cfg.poll_s)
            result = None
        except Exception as error:  # a bad cycle must not end a trainer left running all day
            log.exception("cycle failed; retrying in %.0fs", cfg.poll_s)
            client.report(TrainerReport(state="error", at=time.time(), message=str(error)[:500]))
            cache.current = None  # the weights may be half-updated: reload them next time
            result = None
        if result is not None:
            last_cycle = time.monotonic()
        time.sleep(cfg.poll_s)


def follow(settings: Settings, world: World) -> int:
    """Ranks above 0: each job rank 0 sends is one policy update to take part in, on a policy set
    to the weights and optimizer state rank 0 starts from; until rank 0 sends None."""
    policies: dict[tuple[str, str], tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    while (job := world.receive()) is not None:
        model, optimizer = _follower_policy(settings, world, job, policies)
        train_on_episodes(model, optimizer=optimizer, world=world, **job.kwargs)
    log.info("rank %d: rank 0 is done", world.rank)
    return 0


def _follower_policy(
    settings: Settings,
    world: World,
    job: Job,
    policies: dict[tuple[str, str], tuple[torch.nn.Module, torch.optim.Optimizer]],
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    key = (job.base_model, repr(job.lora))
    if key not in policies:
        policies.clear()  # one policy in memory, as on rank 0
        model = load_policy(job.base_model, None, settings.trainer, world.device, lora=job.lora)
        policies[key] = model, make_optimizer(model, settings.trainer.learning_rate)
    model, optimizer = policies[key]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if trainable.keys() != job.weights.keys():
        raise RuntimeError("rank 0's adapter has other parameters than this rank's")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(job.weights[name])
    optimizer.load_state_dict(job.optimizer)
    return model, optimizer
