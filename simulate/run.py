"""The simulation's rounds and cycles, and `flywheel simulate`'s entry point.

    cycle 0:   evaluation round on the live (base) version
    cycle c:   training round → episodes finalized → `flywheel trainer --once` → evaluation round

An evaluation round has the honest developers write the fixed held-out files with the same seeds
every cycle, so its figures compare across cycles; its editors mark their requests as evaluation,
and the backend keeps those episodes out of the trainer's feed.
A training round has every developer (adversarial ones included) write the next training files;
with `--attacker`, one attacker person beside the honest ones, at `--attacker-share` of its requests
(simulate/attack.py), and each cycle's row says how much of the update was theirs.
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

from core.config import RewardConfig, load_settings
from core.processes import free_port
from simulate.attack import Attacker, Pace, editors_needed, share_of, trained_on
from simulate.corpus import SourceFile, held_out_corpus, load_corpus, split_eval, training_batch
from simulate.developer import Developer, TypingStats
from simulate.editor import Editor
from simulate.plots import plot
from simulate.profiles import ATTACKERS, Profile, assign_profiles, honest_profiles
from simulate.report import (
    CycleRow,
    RoundSamples,
    attack_summary,
    describe_power,
    floors_figures,
    learning_summary,
    round_figures,
    rules_summary,
    simulation_report,
    write_csv,
)
from simulate.services import (
    Backend,
    run_trainer_cycle,
    simulation_env,
    trainer_config,
)
from trainer.gate import heldout_code_parts
from trainer.progress import Progress
from trainer.report import CheckpointFigures
from trainer.state import load_state

log = logging.getLogger("flywheel.simulate")


@dataclass
class SimulationConfig:
    corpus: Path
    model: Path
    out: Path
    cycles: int = 10
    developers: int = 4
    adversarial_share: float = 0.25
    # One attacker person (a profiles.ATTACKERS name) among `developers`, at this share of each
    # training round's requests; `adversarial_share` is then unused.
    attacker: str | None = None
    attacker_share: float = 0.4
    seed: int = 0
    files_per_round: int = 2
    eval_files: int = 2
    # Evaluation rounds a cycle, each over the same files with its own seeds (the same every cycle).
    eval_rounds: int = 1
    # Evaluate cycle 0, every `eval_every`-th cycle and the last (a long run's cost is its
    # evaluations); the other cycles train and record their trainer figures only.
    eval_every: int = 1
    # Each cycle's evaluation rounds again with the version's confidence floors deciding what is
    # shown (the language server's showRule "floors"), beside its own rule (its learned policy).
    compare_floors: bool = False
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
    # The attacker's part of `stats`, in a training round with one.
    attacker: TypingStats | None = None
    # The honest developers' part of `stats` by file name, all of them pooled.
    by_file: dict[str, TypingStats] = field(default_factory=dict)


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
        self.attacker: Attacker | None = None
        # Every suggestion the attacker was shown, to find its episodes by completion id.
        self.attacker_shown: set[str] = set()
        self.trainer_config = trainer_config(self.env)
        self.samples: list[RoundSamples] = []
        # With compare_floors: each cycle's evaluation under the floors, one per entry of `samples`.
        self.floors_samples: list[RoundSamples] = []
        self.cursor = 0
        self.run_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        # Read in this process with the simulation's environment: the reward scale the backend uses.
        self.rewards: RewardConfig = load_settings().rewards
        # Files written over the whole run, with the time left (set up once the corpus is read).
        self.progress: Progress | None = None
        self.phase = ""

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _clear_previous_run(self.out)
        await asyncio.to_thread(self.backend.start)
        log.info("dashboard: %s/admin (figures of each cycle as it ends; reload to update)", self.backend.url)
        config = self.config
        if config.attacker is None:
            profiles = assign_profiles(config.developers, config.adversarial_share)
        else:
            profiles = honest_profiles(config.developers - 1)
        for index, profile in enumerate(profiles):
            profile = replace(profile, max_requests_per_file=config.requests_per_file)
            user_id = f"sim-{index}-{profile.name}"
            token, person = await asyncio.to_thread(self.backend.create_token, user_id)
            editor = await self.start_editor(user_id, token, user_id)
            developer = Developer(editor, profile, config.time_scale)
            self.developers.append(SimDeveloper(user_id, person, profile, editor, developer))
        if config.attacker is not None:
            profile = replace(ATTACKERS[config.attacker], max_requests_per_file=config.requests_per_file)
            user_id = f"sim-attacker-{profile.name}"
            # One token: every editor of the attacker is the same person to the backend.
            token, person = await asyncio.to_thread(self.backend.create_token, user_id)
            lanes = []
            for lane in range(editors_needed(config.attacker_share, len(self.developers))):
                editor = await self.start_editor(f"{user_id}-{lane}", token, user_id)
                lanes.append(Developer(editor, profile, config.time_scale))
            self.attacker = Attacker(user_id, person, profile, config.attacker_share, lanes)
            log.info(
                "attacker %s (%s): %.0f%% of the training requests through %d editors on one token",
                profile.name,
                person,
                100 * config.attacker_share,
                len(lanes),
            )

    async def start_editor(self, name: str, token: str, user_id: str) -> Editor:
        options = {
            "backendUrl": self.backend.url,
            "token": token,
            "userId": user_id,
            "stateDir": str(self.out / "lsp" / name),
            "survivalDelaysS": self.config.survival_delays_s,
            "rewriteWindowS": self.config.rewrite_window_s,
            "flushIntervalS": 0.5,
            "reportsShown": True,
            "debounceMs": 0,
            # The model shares two busy cores with everything else: a slow answer is still one.
            "requestTimeoutS": 20,
        }
        return await Editor.start(self.env, self.out / f"lsp-{name}.log", options)

    async def stop(self) -> None:
        if self.progress is not None:
            self.progress.close()
        editors = [d.editor for d in self.developers] + (self.attacker.editors if self.attacker else [])
        await asyncio.gather(*(editor.stop() for editor in editors), return_exceptions=True)
        await asyncio.to_thread(self.backend.stop)

    async def round(
        self,
        tag: str,
        developers: list[SimDeveloper],
        files: list[SourceFile],
        attacker: Attacker | None = None,
    ) -> RoundResult:
        """Each developer writes each file (developers in parallel), and the attacker, if any,
        keeps pace with them; then events are flushed and the round waits until its shown
        suggestions are finalized episodes."""
        pace = Pace(attacker.share) if attacker is not None else None
        workspace = self.out / "workspace"

        by_file = {source.name: TypingStats() for source in files}

        async def write_all(sim: SimDeveloper) -> TypingStats:
            stats = TypingStats()
            for source in files:
                rng = random.Random(f"{self.config.seed}:{tag}:{sim.user_id}:{source.name}")
                uri = (workspace / sim.user_id / source.name).resolve().as_uri()
                written = await sim.developer.write(
                    uri, source.text, rng, source.header, pace.other if pace is not None else None
                )
                stats.add(written)
                by_file[source.name].add(written)
                if self.progress is not None:
                    self.progress.advance(status=self.phase)
            await sim.editor.drain()
            return stats

        async def write_honest() -> list[TypingStats]:
            try:
                return await asyncio.gather(*(write_all(d) for d in developers))
            finally:
                if pace is not None:
                    await pace.finish_others()

        total = TypingStats()
        attacked = None
        if attacker is not None and pace is not None:
            honest, attacked = await asyncio.gather(
                write_honest(), attacker.write_round(tag, self.config.seed, files, workspace, pace)
            )
            self.attacker_shown.update(attacked.shown_ids)
        else:
            honest = await write_honest()
        for stats in [*honest, *([attacked] if attacked else [])]:
            total.add(stats)
        wait_s = self.config.episode_window_s + 30
        episodes, self.cursor = await asyncio.to_thread(
            self.backend.wait_for_episodes, self.cursor, set(total.shown_ids), wait_s
        )
        return RoundResult(total, episodes, attacked, by_file)

    async def evaluate(self, cycle: int, evaluation: list[SourceFile]) -> CycleRow:
        honest = [d for d in self.developers if d.profile.honest]
        started = time.monotonic()
        stats, episodes, by_file = await self.evaluation_rounds(honest, evaluation, "version")
        eval_s = time.monotonic() - started
        live = await asyncio.to_thread(self.backend.live_version)
        samples = RoundSamples.of(live, stats.requests, episodes, self.rewards, by_file)
        self.samples.append(samples)
        if cycle == 0:
            for figure, power in learning_summary([samples])["power_at_cycle_0"].items():
                log.info("cycle 0, %s: %s", figure, describe_power(power))
        row = CycleRow(cycle, live, **round_figures(stats, episodes, samples), eval_s=eval_s)
        if self.config.compare_floors:
            started = time.monotonic()
            stats, episodes, by_file = await self.evaluation_rounds(honest, evaluation, "floors")
            floors = RoundSamples.of(live, stats.requests, episodes, self.rewards, by_file)
            self.floors_samples.append(floors)
            for name, value in floors_figures(stats, episodes, floors).items():
                setattr(row, name, value)
            row.floors_eval_s = time.monotonic() - started
        return row

    async def evaluation_rounds(
        self, honest: list[SimDeveloper], evaluation: list[SourceFile], show_rule: str
    ) -> tuple[TypingStats, list[dict[str, Any]], list[dict[str, TypingStats]]]:
        """The honest developers write the evaluation files, each round with its seeds, their
        requests marked as evaluation (scored like the rest, never in the trainer's episodes) and
        decided by `show_rule`: "version", the live version's own rule, or "floors"."""
        for sim in honest:
            sim.editor.configure({"evaluation": True, "showRule": show_rule})
        stats, episodes, by_file = TypingStats(), [], []
        try:
            # Same tags every cycle: the same seeds, so cycles differ only by the model.
            for tag in evaluation_tags(self.config.eval_rounds):
                result = await self.round(tag, honest, evaluation)
                stats.add(result.stats)
                episodes += result.episodes
                by_file.append(result.by_file)
        finally:
            for sim in honest:
                sim.editor.configure({"evaluation": False, "showRule": "version"})
        return stats, episodes, by_file

    async def train(self, cycle: int, training: list[SourceFile]) -> dict[str, Any]:
        files = training_batch(training, cycle - 1, self.config.files_per_round)
        started = time.monotonic()
        result = await self.round(f"train{cycle}", self.developers, files, self.attacker)
        train_round_s = time.monotonic() - started
        before = {c["version"] for c in await asyncio.to_thread(self.backend.checkpoints)}
        cursor = load_state(self.data_dir / "trainer").cursor
        live = await asyncio.to_thread(self.backend.live_version)
        started = time.monotonic()
        if self.progress is not None:
            self.progress.advance(0, status=f"cycle {cycle}: trainer")
        code = await asyncio.to_thread(run_trainer_cycle, self.env, self.out / "trainer.log")
        if code != 0:
            raise RuntimeError(
                f"`flywheel trainer --once` exited with {code}; see {self.out / 'trainer.log'}"
            )
        new = [c for c in await asyncio.to_thread(self.backend.checkpoints) if c["version"] not in before]
        figures: dict[str, Any] = {
            "train_requests": result.stats.requests,
            "train_episodes": len(result.episodes),
            "train_round_s": train_round_s,
            "trainer_s": time.monotonic() - started,
            "candidate_state": "skipped",
        }
        if new:
            # The update; a second checkpoint carries new floors alone, on the live weights, when
            # the gate refused the update (trainer/cycle.py).
            made = [CheckpointFigures.of(c["metrics"]) for c in new]
            figures.update(
                candidate=" + ".join(c["version"] for c in new),
                candidate_state=" + ".join(
                    c["state"] + (" (floors only)" if m.floors_only else "")
                    for c, m in zip(new, made, strict=True)
                ),
                trained_on=made[0].trained_on,
                dropped=";".join(f"{k}={v}" for k, v in sorted(made[0].dropped.items())),
            )
            if self.attacker is not None and not made[0].floors_only:
                figures.update(await self.attacker_in_update(cycle, cursor, live, figures["trained_on"]))
        if result.attacker is not None and result.stats.requests:
            figures["attacker_requests_share"] = result.attacker.requests / result.stats.requests
        return figures

    async def attacker_in_update(self, cycle: int, cursor: int, live: str, trained: int) -> dict[str, Any]:
        """The attacker's episodes among those the cycle's update trained on: the episodes the
        trainer read (from its cursor before the cycle to its cursor after), through its guards."""
        assert self.attacker is not None
        after = load_state(self.data_dir / "trainer").cursor
        episodes, _ = await asyncio.to_thread(self.backend.episodes_between, cursor, False)
        kept, train = trained_on([e for e in episodes if e["seq"] <= after], live, self.trainer_config)
        if len(train) != trained:
            log.warning(
                "cycle %d: the trainer trained on %d episodes, its guards replayed here keep %d;"
                " the attacker's share below is of those",
                cycle,
                trained,
                len(train),
            )
        person = self.attacker.person
        log.info(
            "cycle %d: attacker's episodes kept by the guards %d of %d (%s), trained on %d of %d (%s)",
            cycle,
            sum(e.user_id == person for e in kept),
            len(kept),
            _fmt(share_of(person, kept)),
            sum(e.user_id == person for e in train),
            len(train),
            _fmt(share_of(person, train)),
        )
        return {
            "attacker_kept_share": share_of(person, kept),
            "attacker_trained_on": sum(e.user_id == person for e in train),
            "attacker_share": share_of(person, train),
        }

    def fill_perplexity(self, rows: list[CycleRow], checkpoints: list[dict[str, Any]]) -> None:
        """Held-out perplexity of each row's live version, from the trainer's eval-gate figures (the
        gate measures the candidate, and the base model, on the fixed held-out code set)."""
        by_version: dict[str, float] = {}
        for checkpoint in checkpoints:
            figures = (checkpoint["metrics"].get("gate") or {}).get("figures") or {}
            if "ppl_candidate" in figures:
                by_version[checkpoint["version"]] = figures["ppl_candidate"]
            elif (
                CheckpointFigures.of(checkpoint["metrics"]).floors_only
                and checkpoint["parent_version"] in by_version
            ):
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
        self.progress = Progress("simulate", self.files_to_write(evaluation, training), unit="files")
        self.phase = "cycle 0: evaluation"
        rows = [await self.evaluate(0, evaluation)]
        self.write(rows)
        for cycle in range(1, self.config.cycles + 1):
            self.phase = f"cycle {cycle}: training"
            trained = await self.train(cycle, training)
            self.phase = f"cycle {cycle}: evaluation"
            if evaluated(cycle, self.config):
                row = await self.evaluate(cycle, evaluation)
            else:
                row = CycleRow(cycle, await asyncio.to_thread(self.backend.live_version))
            for name, value in trained.items():
                setattr(row, name, value)
            rows.append(row)
            self.write(rows)
        await self.write_users()
        self.write_summary(rows)
        return rows

    def files_to_write(self, evaluation: list[SourceFile], training: list[SourceFile]) -> int:
        """The honest developers write the evaluation files every cycle and cycle 0; everyone the
        training files of cycles 1..N (the attacker keeps pace beside them, uncounted). The trainer's
        cycles take no files: their time is in the pace, so the time left includes them."""
        honest = sum(d.profile.honest for d in self.developers)
        cycles = self.config.cycles
        rules = 2 if self.config.compare_floors else 1
        evaluations = sum(evaluated(cycle, self.config) for cycle in range(cycles + 1))
        writes = len(evaluation) * honest * evaluations * self.config.eval_rounds * rules
        for cycle in range(1, cycles + 1):
            batch = training_batch(training, cycle - 1, self.config.files_per_round)
            writes += len(batch) * len(self.developers)
        return writes

    def write_summary(self, rows: list[CycleRow]) -> None:
        """summary.json: the learning ratios with bootstrap intervals, also logged; with an
        attacker, the poisoning criteria per cycle."""
        summary = learning_summary(self.samples)
        summary["wall_s"] = wall_times(rows, time.time() - self.started_at)
        # One entry of `samples` per evaluated cycle.
        evaluated_rows = [row for row in rows if evaluated(row.cycle, self.config)]
        log.info("wall seconds: %s", ", ".join(f"{k} {v:.0f}" for k, v in summary["wall_s"].items()))
        if self.floors_samples:
            summary["rules"] = rules_summary(evaluated_rows, self.samples, self.floors_samples)
            for rule, figures in summary["rules"].items():
                log.info(
                    "%s rule, last cycle over cycle 0: accept rate %s, ARC per request %s; calls saved %s",
                    rule,
                    _fmt_ratio(figures["last_cycle"]["accept_rate"]),
                    _fmt_ratio(figures["last_cycle"]["arc_per_request"]),
                    _fmt(figures["cycles"][-1]["calls_saved"]),
                )
        if self.attacker is not None:
            summary["attack"] = attack_summary(
                rows,
                {row.cycle: samples for row, samples in zip(evaluated_rows, self.samples, strict=True)},
                self.attacker.profile.name,
                self.attacker.share,
                self.trainer_config.guards.max_user_share,
            )
            log.info(
                "attack by %s: honest mean reward never below cycle 0's: %s; attacker's share of every"
                " update within max_user_share %.2f: %s",
                self.attacker.profile.name,
                summary["attack"]["honest_reward_never_below_cycle_0"],
                self.trainer_config.guards.max_user_share,
                summary["attack"]["attacker_share_within_cap"],
            )
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
            for figure in ("accept_rate", "arc_per_request"):
                if figures[figure] is not None:
                    log.info("%s, %s: %s", name, figure, describe_power(figures[figure]["power"]))

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
            "adversarial share": config.adversarial_share if config.attacker is None else 0.0,
            "attacker": config.attacker,
            "attacker share": config.attacker_share if config.attacker is not None else None,
            "max user share": self.trainer_config.guards.max_user_share,
            "seed": config.seed,
            "files per round": config.files_per_round,
            "eval files": config.eval_files,
            "eval rounds": config.eval_rounds,
            "eval every": config.eval_every,
            "compare floors": config.compare_floors,
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
        if self.attacker is not None:
            attacker, attacker_shown = self.attacker, self.attacker_shown
            mine = [e for e in episodes if e["user_id"] == attacker.person]
            users[attacker.user_id] = {
                "profile": attacker.profile.name,
                "person": attacker.person,
                "editors": len(attacker.lanes),
                # The user ids it sent (one per file for many-ids), and the people the backend
                # filed the episodes of its suggestions under.
                "user_ids_sent": sorted(set(attacker.hints) or {attacker.user_id}),
                "persons": sorted({e["user_id"] for e in episodes if e["completion_id"] in attacker_shown}),
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
    by_file = "none (one file)" if figure["ci95"] is None else "{:.2f}-{:.2f}".format(*figure["ci95"])
    return "{:.2f}x (95% CI by file {}; by request {:.2f}-{:.2f})".format(
        figure["ratio"], by_file, *figure["ci95_by_request"]
    )


def wall_times(rows: list[CycleRow], total_s: float) -> dict[str, float]:
    """Where a run's wall time went: its training rounds, trainer cycles and evaluation rounds
    (the floors' apart), summed over cycles, and the whole run's."""

    def total(name: str) -> float:
        return round(sum(getattr(row, name) or 0.0 for row in rows), 1)

    return {
        "training_rounds": total("train_round_s"),
        "trainer_cycles": total("trainer_s"),
        "evaluation_rounds": total("eval_s"),
        "floors_evaluation_rounds": total("floors_eval_s"),
        "total": round(total_s, 1),
    }


def evaluated(cycle: int, config: SimulationConfig) -> bool:
    """Whether `cycle` has evaluation rounds (cycle 0, every `eval_every`-th, the last)."""
    return cycle % config.eval_every == 0 or cycle == config.cycles


def evaluation_tags(rounds: int) -> list[str]:
    """The seed tag of each evaluation round: the first keeps the one-round runs' seeds."""
    return ["eval"] + [f"eval{n}" for n in range(1, rounds)]


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
    if args.plot_only:
        from simulate.plots import plot_runs

        png, *outs = args.plot_only
        if not outs:
            print("flywheel simulate: --plot-only PNG DIR [DIR...]: the runs' directories after the PNG")
            return 2
        plot_runs([Path(out) for out in outs], Path(png))
        print(f"flywheel simulate: {png}")
        return 0
    if args.attacker is not None and args.adversarial_share is not None:
        print("flywheel simulate: --attacker or --adversarial-share, not both")
        return 2
    if args.attacker is not None and (args.developers < 2 or not 0 < args.attacker_share < 1):
        print("flywheel simulate: --attacker needs --developers 2 or more and 0 < --attacker-share < 1")
        return 2
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
        adversarial_share=0.25 if args.adversarial_share is None else args.adversarial_share,
        attacker=args.attacker,
        attacker_share=args.attacker_share,
        seed=args.seed,
        files_per_round=args.files_per_round,
        eval_files=args.eval_files or args.files_per_round,
        eval_rounds=max(1, args.eval_rounds),
        eval_every=max(1, args.eval_every),
        compare_floors=args.compare_floors,
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
