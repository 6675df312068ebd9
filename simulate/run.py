"""The simulation's rounds and cycles, and `flywheel simulate`'s entry point.

    cycle 0:   evaluation round on the live (base) version
    cycle c:   training round → episodes finalized → `flywheel trainer --once` → evaluation round

An evaluation round has the honest developers write the fixed held-out files with the same seeds
every cycle, so its figures compare across cycles; its episodes are stepped over by the trainer.
A training round has every developer (adversarial ones included) write the next training files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from flywheel.config import RewardConfig, load_settings
from flywheel.processes import free_port
from simulate.corpus import SourceFile, held_out_corpus, load_corpus, split_eval, training_batch
from simulate.developer import Developer, TypingStats
from simulate.editor import Editor
from simulate.profiles import Profile, assign_profiles
from simulate.report import (
    CycleRow,
    RoundSamples,
    learning_summary,
    plot,
    round_figures,
    simulation_report,
    write_csv,
)
from simulate.services import (
    Backend,
    exclude_from_training,
    run_trainer_cycle,
    simulation_env,
)
from trainer.gate import heldout_code_parts

log = logging.getLogger("flywheel.simulate")


@dataclass
class SimulationConfig:
    corpus: Path
    model: Path
    out: Path
    cycles: int = 10
    developers: int = 4
    adversarial_share: float = 0.25
    seed: int = 0
    files_per_round: int = 2
    eval_files: int = 2
    max_lines: int = 120
    # Each developer asks for at most this many suggestions in a file (the rest they type).
    requests_per_file: int = 40
    # Simulated seconds per real second, for typing. Survival and windows below are real seconds.
    time_scale: float = 50.0
    survival_delays_s: list[float] = field(default_factory=lambda: [0.3, 1.0])
    rewrite_window_s: float = 2.0
    episode_window_s: float = 15.0


@dataclass
class SimDeveloper:
    # The simulation's name for the developer (their files, logs and random seeds); the backend
    # files their episodes under `person`, the pseudonym of the token they were given.
    user_id: str
    person: str
    profile: Profile
    editor: Editor
    developer: Developer


@dataclass
class RoundResult:
    stats: TypingStats
    episodes: list[dict[str, Any]]
    start: int
    end: int


def _clear_previous_run(out: Path) -> None:
    """Every run starts from the base model: the store, checkpoints and language-server state a
    previous run left in `out` go (left there, its backend would come up serving its last version)."""
    data = out / "data"
    if data.exists() and any(data.iterdir()) and not (data / "flywheel.sqlite3").exists():
        raise SystemExit(f"{data} is not a simulation's state; choose another --out")
    for state in (data, out / "lsp"):
        if state.exists():
            log.info("removing the previous run's %s", state)
            shutil.rmtree(state)


class Simulation:
    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.out = config.out
        self.data_dir = config.out / "data"
        self.env = simulation_env(config.model, self.data_dir, free_port(), config.episode_window_s)
        self.backend = Backend(self.env, config.out / "backend.log")
        self.developers: list[SimDeveloper] = []
        self.samples: list[RoundSamples] = []
        self.cursor = 0
        self.run_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        # Read in this process with the simulation's environment: the reward scale the backend uses.
        self.rewards: RewardConfig = load_settings().rewards

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _clear_previous_run(self.out)
        await asyncio.to_thread(self.backend.start)
        log.info("dashboard: %s/admin (figures of each cycle as it ends; reload to update)", self.backend.url)
        for index, profile in enumerate(
            assign_profiles(self.config.developers, self.config.adversarial_share)
        ):
            profile = replace(profile, max_requests_per_file=self.config.requests_per_file)
            user_id = f"sim-{index}-{profile.name}"
            token, person = await asyncio.to_thread(self.backend.create_token, user_id)
            options = {
                "backendUrl": self.backend.url,
                "token": token,
                "userId": user_id,
                "stateDir": str(self.out / "lsp" / user_id),
                "survivalDelaysS": self.config.survival_delays_s,
                "rewriteWindowS": self.config.rewrite_window_s,
                "flushIntervalS": 0.5,
                "reportsShown": True,
                "debounceMs": 0,
                # The model shares two busy cores with everything else: a slow answer is still one.
                "requestTimeoutS": 20,
            }
            editor = await Editor.start(self.env, self.out / f"lsp-{user_id}.log", options)
            developer = Developer(editor, profile, self.config.time_scale)
            self.developers.append(SimDeveloper(user_id, person, profile, editor, developer))

    async def stop(self) -> None:
        await asyncio.gather(*(d.editor.stop() for d in self.developers), return_exceptions=True)
        await asyncio.to_thread(self.backend.stop)

    async def round(self, tag: str, developers: list[SimDeveloper], files: list[SourceFile]) -> RoundResult:
        """Each developer writes each file (developers in parallel); then events are flushed and
        the round waits until its shown suggestions are finalized episodes."""

        async def write_all(sim: SimDeveloper) -> TypingStats:
            stats = TypingStats()
            for source in files:
                rng = random.Random(f"{self.config.seed}:{tag}:{sim.user_id}:{source.name}")
                uri = (self.out / "workspace" / sim.user_id / source.name).resolve().as_uri()
                stats.add(await sim.developer.write(uri, source.text, rng, source.header))
            for _ in range(5):
                if await sim.editor.flush() == 0:
                    break
                await asyncio.sleep(0.5)
            return stats

        total = TypingStats()
        for stats in await asyncio.gather(*(write_all(d) for d in developers)):
            total.add(stats)
        start = self.cursor
        episodes, self.cursor = await asyncio.to_thread(
            self.backend.wait_for_episodes, start, set(total.shown_ids), self.config.episode_window_s + 30
        )
        return RoundResult(total, episodes, start, self.cursor)

    async def evaluate(self, cycle: int, evaluation: list[SourceFile]) -> CycleRow:
        honest = [d for d in self.developers if not d.profile.adversarial]
        # Same tag every cycle: the same seeds, so cycles differ only by the model.
        result = await self.round("eval", honest, evaluation)
        if not exclude_from_training(self.data_dir / "trainer", self.backend, result.start, result.end):
            log.warning(
                "cycle %d: the trainer had episodes waiting; evaluation episodes may be trained on", cycle
            )
        live = await asyncio.to_thread(self.backend.live_version)
        samples = RoundSamples.of(live, result.stats.requests, result.episodes, self.rewards)
        self.samples.append(samples)
        return CycleRow(cycle, live, **round_figures(result.stats, result.episodes, samples))

    async def train(self, cycle: int, training: list[SourceFile]) -> dict[str, Any]:
        files = training_batch(training, cycle - 1, self.config.files_per_round)
        result = await self.round(f"train{cycle}", self.developers, files)
        before = {c["version"] for c in await asyncio.to_thread(self.backend.checkpoints)}
        started = time.monotonic()
        code = await asyncio.to_thread(run_trainer_cycle, self.env, self.out / "trainer.log")
        if code != 0:
            raise RuntimeError(
                f"`flywheel trainer --once` exited with {code}; see {self.out / 'trainer.log'}"
            )
        new = [c for c in await asyncio.to_thread(self.backend.checkpoints) if c["version"] not in before]
        figures: dict[str, Any] = {
            "train_requests": result.stats.requests,
            "train_episodes": len(result.episodes),
            "trainer_s": time.monotonic() - started,
            "candidate_state": "skipped",
        }
        if new:
            # The update; a second checkpoint carries new floors alone, on the live weights, when
            # the gate refused the update (trainer/cycle.py).
            metrics = new[0]["metrics"]
            dropped = {
                k.removeprefix("dropped_"): int(v) for k, v in metrics.items() if k.startswith("dropped_")
            }
            figures.update(
                candidate=" + ".join(c["version"] for c in new),
                candidate_state=" + ".join(
                    c["state"] + (" (floors only)" if c["metrics"].get("floors_only") else "") for c in new
                ),
                trained_on=int(metrics.get("episodes", 0)),
                dropped=";".join(f"{k}={v}" for k, v in sorted(dropped.items())),
            )
        return figures

    def fill_perplexity(self, rows: list[CycleRow], checkpoints: list[dict[str, Any]]) -> None:
        """Held-out perplexity of each row's live version, from the trainer's eval-gate figures (the
        gate measures the candidate, and the base model, on the fixed held-out code set)."""
        by_version: dict[str, float] = {}
        for checkpoint in checkpoints:
            figures = (checkpoint["metrics"].get("gate") or {}).get("figures") or {}
            if "ppl_candidate" in figures:
                by_version[checkpoint["version"]] = figures["ppl_candidate"]
            elif checkpoint["metrics"].get("floors_only") and checkpoint["parent_version"] in by_version:
                # The parent's weights, new floors.
                by_version[checkpoint["version"]] = by_version[checkpoint["parent_version"]]
            if "ppl_base" in figures:
                by_version.setdefault("base", figures["ppl_base"])
        for row in rows:
            row.heldout_ppl = by_version.get(row.live_version, row.heldout_ppl)

    async def run(self) -> list[CycleRow]:
        files = load_corpus(self.config.corpus, self.config.max_lines)
        if not files:
            raise SystemExit(f"flywheel simulate: no Python files under {self.config.corpus}")
        evaluation, training = split_eval(files, self.config.eval_files)
        log.info("evaluation files: %s", ", ".join(f.name for f in evaluation))
        rows = [await self.evaluate(0, evaluation)]
        self.write(rows)
        for cycle in range(1, self.config.cycles + 1):
            trained = await self.train(cycle, training)
            row = await self.evaluate(cycle, evaluation)
            for name, value in trained.items():
                setattr(row, name, value)
            rows.append(row)
            self.write(rows)
        await self.write_users()
        self.write_summary()
        return rows

    def write_summary(self) -> None:
        """summary.json: the learning ratios with bootstrap intervals, also logged."""
        summary = learning_summary(self.samples)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for name in ("last_cycle", f"rounds_of_{summary['live_version']}"):
            figures = summary[name]
            log.info(
                "%s (%d rounds) over cycle 0: accept rate %s, ARC per request %s",
                name,
                figures["rounds"],
                _fmt_ratio(figures["accept_rate"]),
                _fmt_ratio(figures["arc_per_request"]),
            )

    def write(self, rows: list[CycleRow]) -> None:
        self.fill_perplexity(rows, self.backend.checkpoints())
        write_csv(rows, self.out / "cycles.csv")
        plot(rows, self.out / "cycles.png")
        self.report(rows)
        row = rows[-1]
        log.info(
            "cycle %d | live %s | requests %d shown %s accept %s ARC/100 %s reward %s ppl %s"
            " | candidate %s %s",
            row.cycle,
            row.live_version,
            row.requests,
            _fmt(row.shown_rate),
            _fmt(row.accept_rate),
            _fmt(row.arc_per_100),
            _fmt(row.mean_reward),
            _fmt(row.heldout_ppl),
            row.candidate or "-",
            row.candidate_state or "",
        )

    def report(self, rows: list[CycleRow]) -> None:
        """Best effort: the dashboard's copy of the figures must never stop the simulation (the CSV
        and the plot have them)."""
        config = self.config
        try:
            self.backend.report(
                simulation_report(
                    rows,
                    run_id=self.run_id,
                    started_at=self.started_at,
                    updated_at=time.time(),
                    corpus=str(config.corpus),
                    planned_cycles=config.cycles,
                    settings=self.settings_summary(),
                )
            )
        except (httpx.HTTPError, ValidationError) as error:
            log.warning("cycle %d: figures not sent to the dashboard: %s", rows[-1].cycle, error)

    def settings_summary(self) -> dict[str, str | int | float | bool | None]:
        config = self.config
        return {
            "model": config.model.name,
            "developers": config.developers,
            "adversarial share": config.adversarial_share,
            "seed": config.seed,
            "files per round": config.files_per_round,
            "eval files": config.eval_files,
            "max lines": config.max_lines,
            "requests per file": config.requests_per_file,
            "time scale": config.time_scale,
        }

    async def write_users(self) -> None:
        """Per user, what the backend recorded over the whole run: the adversarial users' figures
        beside the honest ones'."""
        episodes, _ = await asyncio.to_thread(self.backend.episodes_between, 0)
        users: dict[str, Any] = {}
        for d in self.developers:
            mine = [e for e in episodes if e["user_id"] == d.person]
            users[d.user_id] = {
                "profile": d.profile.name,
                "episodes": len(mine),
                "outcomes": dict(Counter(e["outcome"] for e in mine)),
                "mean_reward": sum(e["reward"] for e in mine) / len(mine) if mine else None,
            }
        (self.out / "users.json").write_text(json.dumps(users, indent=2) + "\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_ratio(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "- (nothing in cycle 0)"
    low, high = figure["ci95"]
    return f"{figure['ratio']:.2f}x (95% CI {low:.2f}-{high:.2f})"


async def simulate(config: SimulationConfig) -> list[CycleRow]:
    # `kill` ends a run as Ctrl-C does: the backend and the language servers are stopped with it
    # (they were left running, holding their ports and a core).
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    simulation = Simulation(config)
    try:
        await simulation.start()
        return await simulation.run()
    finally:
        await simulation.stop()


def main(args: argparse.Namespace) -> int:
    """`flywheel simulate`."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per message and per HTTP call would bury the per-cycle lines.
    for chatty in ("pygls", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    model = args.model or load_settings().default_model_dir
    if not (Path(model) / "config.json").is_file():
        print(f"flywheel simulate: no model at {model}; run `flywheel bootstrap` or pass --model DIR")
        return 2
    out = args.out.resolve()
    # The trainer's perplexity check reads some held-out files; training on them would spoil it.
    ppl_files = [key for key, _ in heldout_code_parts(load_settings().trainer.gate.ppl_chars)]
    corpus = args.corpus or held_out_corpus(Path(model), out / "corpus", exclude=ppl_files)
    config = SimulationConfig(
        corpus=corpus,
        model=Path(model).resolve(),
        out=out,
        cycles=args.cycles,
        developers=args.developers,
        adversarial_share=args.adversarial_share,
        seed=args.seed,
        files_per_round=args.files_per_round,
        eval_files=args.eval_files or args.files_per_round,
        max_lines=args.max_lines,
        requests_per_file=args.requests_per_file,
        time_scale=args.time_scale,
    )
    try:
        asyncio.run(simulate(config))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("flywheel simulate: stopped; the figures of the cycles done are in", config.out)
        return 130
    print(f"flywheel simulate: {config.out / 'cycles.csv'}, {config.out / 'cycles.png'}")
    return 0
