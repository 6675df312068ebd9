"""Per-cycle figures of the simulation, written as a CSV (drawn by simulate/plots.py).

Figures of an evaluation round come from two sides on purpose: requests and shown suggestions
from the simulated editors (an abstention never reaches the backend's episode list as shown),
and accept rate, ARC and reward from the backend's finalized episodes, i.e. from what the real
language server measured. The episode list carries the reward, not the similarity at the last
survival check; for accepted episodes the reward is s·accepted + (1−s)·rejected, so s is recovered
from it exactly with the same RewardConfig the backend scores with.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RewardConfig
from core.rewards import ACCEPTED_OUTCOMES, kept_characters
from core.wire import SimulationCycle, SimulationReport
from simulate.developer import TypingStats
from simulate.intervals import (
    Totals,
    between_rounds_sd,
    cluster_ratio_interval,
    log_ratio_sd,
    power_figures,
)


@dataclass
class CycleRow:
    cycle: int
    live_version: str
    # The evaluation round (honest developers, held-out files, same seeds every cycle).
    requests: int = 0
    shown: int = 0
    shown_rate: float | None = None
    accepted: int = 0
    fixed: int = 0
    partial: int = 0
    dismissed: int = 0
    episodes: int = 0
    accept_rate: float | None = None
    arc_per_100: float | None = None
    mean_reward: float | None = None
    heldout_ppl: float | None = None
    # The training round and trainer cycle that led to this live version (none for cycle 0).
    train_requests: int = 0
    train_episodes: int = 0
    trained_on: int | None = None
    candidate: str = ""
    candidate_state: str = ""
    dropped: str = ""
    trainer_s: float | None = None
    # With an attacker (--attacker): its share of the training round's requests, of the episodes
    # the guards kept (what max_user_share bounds) and of those the update trained on (the kept
    # less the gate's held-out sample, drawn by hash). CSV and summary only: the dashboard's wire
    # format has no place for them yet (CSV_ONLY).
    attacker_requests_share: float | None = None
    attacker_kept_share: float | None = None
    attacker_trained_on: int | None = None
    attacker_share: float | None = None
    # The rule that decided what the evaluation rounds were shown (ServingDecision.rule: "learned",
    # the version's show policy, or "floors"; both when some requests met each) and the share of
    # their requests it answered without calling the model (the trigger's skips).
    rule: str = ""
    calls_saved: float | None = None
    # With --compare-floors: the same evaluation rounds (files, seeds, version) again, decided by
    # the version's confidence floors alone (the language server's showRule "floors").
    floors_requests: int | None = None
    floors_shown_rate: float | None = None
    floors_episodes: int | None = None
    floors_accept_rate: float | None = None
    floors_arc_per_100: float | None = None
    floors_mean_reward: float | None = None
    floors_calls_saved: float | None = None
    # Wall seconds of this cycle's training round and evaluation rounds (the floors' apart);
    # trainer_s above is its trainer cycle's.
    train_round_s: float | None = None
    eval_s: float | None = None
    floors_eval_s: float | None = None


# CycleRow fields core.wire.SimulationCycle does not carry.
CSV_ONLY = frozenset(
    {
        "attacker_requests_share",
        "attacker_kept_share",
        "attacker_trained_on",
        "attacker_share",
        "rule",
        "calls_saved",
        *(f"floors_{name}" for name in ("requests", "shown_rate", "episodes", "accept_rate")),
        *(f"floors_{name}" for name in ("arc_per_100", "mean_reward", "calls_saved", "eval_s")),
        "train_round_s",
        "eval_s",
    }
)
# The show rules an evaluation compares (--compare-floors), and the prefix of each one's columns.
RULES = {"version": "", "floors": "floors_"}


def kept_chars(episode: dict[str, Any], rewards: RewardConfig) -> float:
    """Characters of an episode's suggestion its user accepted and kept (0 when not accepted)."""
    return kept_characters(episode["outcome"], episode["reward"], episode["text"], rewards)


@dataclass
class RoundSamples:
    """An evaluation round per unit: each rated suggestion accepted or not, each request's kept
    characters (requests that got no episode kept none)."""

    live_version: str
    accepted: list[float]
    kept_per_request: list[float]
    # Where the cursor stood (core/confidence.py) → [episodes, shown, accepted] there.
    places: dict[str, list[int]] = field(default_factory=dict)
    # Each episode's reward.
    rewards: list[float] = field(default_factory=list)
    # Per evaluation file, every developer's and round's requests in it pooled:
    # [accepted, rated, kept characters, requests] (simulate/intervals.py resamples these).
    files: dict[str, list[float]] = field(default_factory=dict)
    # The same per evaluation round (--eval-rounds), for the planning power figure.
    round_files: list[dict[str, list[float]]] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        live: str,
        requests: int,
        episodes: Sequence[dict[str, Any]],
        rewards: RewardConfig,
        rounds_by_file: Sequence[Mapping[str, TypingStats]] = (),
    ) -> RoundSamples:
        rated = [e for e in episodes if e["outcome"] != "abstained"]
        kept = [kept_chars(e, rewards) for e in episodes]
        places: dict[str, list[int]] = {}
        for e in episodes:
            counts = places.setdefault(e.get("place") or "unknown", [0, 0, 0])
            counts[0] += 1
            counts[1] += e["outcome"] != "abstained"
            counts[2] += e["outcome"] in ACCEPTED_OUTCOMES
        # Per evaluation round, its files (by_file: the honest developers' writing of each, pooled).
        per_round = [
            {name: file_totals(stats, episodes, rewards) for name, stats in by_file.items()}
            for by_file in rounds_by_file
        ]
        return cls(
            live,
            [float(e["outcome"] in ACCEPTED_OUTCOMES) for e in rated],
            kept + [0.0] * max(0, requests - len(kept)),
            places,
            [float(e["reward"]) for e in episodes],
            pool(per_round),
            per_round,
        )

    def place_figures(self) -> dict[str, dict[str, float | int | None]]:
        """Per place: episodes, the share of them shown, and the accept rate of those shown."""
        return {
            place: {
                "episodes": n,
                "shown_rate": shown / n if n else None,
                "accept_rate": accepted / shown if shown else None,
            }
            for place, (n, shown, accepted) in sorted(self.places.items())
        }


def file_totals(stats: TypingStats, episodes: Sequence[dict[str, Any]], rewards: RewardConfig) -> list[float]:
    """[accepted, rated, kept characters, requests] of one file, from the episodes of the
    suggestions its writers were shown (withheld ones keep nothing and are rated by no one)."""
    ids = set(stats.shown_ids)
    mine = [e for e in episodes if e["completion_id"] in ids and e["outcome"] != "abstained"]
    return [
        float(sum(e["outcome"] in ACCEPTED_OUTCOMES for e in mine)),
        float(len(mine)),
        float(sum(kept_chars(e, rewards) for e in mine)),
        float(stats.requests),
    ]


# A learning figure → the RoundSamples list it resamples by request, and its columns in `files`.
FIGURES = {"accept_rate": ("accepted", 0, 1), "arc_per_request": ("kept_per_request", 2, 3)}


def figure_totals(files: Mapping[str, list[float]], figure: str) -> Totals:
    """Per file, the figure's numerator and denominator."""
    _, top, bottom = FIGURES[figure]
    return {name: (totals[top], totals[bottom]) for name, totals in files.items()}


def pool(rounds: Sequence[Mapping[str, list[float]]]) -> dict[str, list[float]]:
    """Each file's totals summed over several rounds of it."""
    pooled: dict[str, list[float]] = {}
    for files in rounds:
        for name, totals in files.items():
            pooled[name] = [a + b for a, b in zip(pooled.get(name, [0.0] * 4), totals, strict=True)]
    return pooled


def planned_power(first: RoundSamples, figure: str) -> dict[str, Any] | None:
    """What cycle 0's files say the run can tell: paired from its rounds when it has two or more,
    else from its files as fresh samples (intervals.py says which errs which way)."""
    rounds = [figure_totals(files, figure) for files in first.round_files]
    paired = between_rounds_sd(rounds)
    sd = paired if paired is not None else log_ratio_sd(figure_totals(first.files, figure))
    figures = power_figures(sd, len(first.files))
    if figures is not None:
        figures["from"] = "rounds, paired" if paired is not None else "one round, unpaired"
    return figures


def ratio_interval(
    before: Sequence[float], after: Sequence[float], resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float] | None:
    """mean(after) / mean(before) with its 95% percentile bootstrap interval, each side resampled
    on its own (two rounds are independent samples of requests); None when before's mean is 0."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if not len(a) or not len(b) or a.mean() == 0:
        return None
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(len(a), size=(resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(len(b), size=(resamples, len(b)))].mean(axis=1)
    # A resample of `before` with mean 0 has no ratio; it is left out of the percentiles.
    ratios = means_b[means_a > 0] / means_a[means_a > 0]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(b.mean() / a.mean()), float(low), float(high)


def difference_interval(
    before: Sequence[float], after: Sequence[float], resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float] | None:
    """mean(after) − mean(before) with its 95% percentile bootstrap interval, each side resampled on
    its own; None when either side is empty."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if not len(a) or not len(b):
        return None
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(len(a), size=(resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(len(b), size=(resamples, len(b)))].mean(axis=1)
    low, high = np.percentile(means_b - means_a, [2.5, 97.5])
    return float(b.mean() - a.mean()), float(low), float(high)


def learning_summary(rounds: Sequence[RoundSamples]) -> dict[str, Any]:
    """Cycle 0 against the last cycle, and against every round the last live version served
    pooled (one round's figures move by a tenth or more between rounds of the same model); each
    ratio with its 95% interval resampled by file (`ci95`) and, for comparison, by request; and
    what the run could tell, planned from cycle 0's files and achieved in each comparison."""
    first, last = rounds[0], rounds[-1]
    pooled = [r for r in rounds[1:] if r.live_version == last.live_version] or [last]
    summary: dict[str, Any] = {"cycles": len(rounds) - 1, "live_version": last.live_version}
    summary["power_at_cycle_0"] = {figure: planned_power(first, figure) for figure in FIGURES}
    for name, after in (("last_cycle", [last]), (f"rounds_of_{last.live_version}", pooled)):
        figures: dict[str, Any] = {"rounds": len(after)}
        for figure in FIGURES:
            figures[figure] = ratio_figures(first, after, figure)
        summary[name] = figures
    # Where suggestions stopped being shown, and how those still shown fared there.
    summary["by_place"] = {"cycle_0": first.place_figures(), "last_cycle": last.place_figures()}
    return summary


def rules_summary(
    rows: Sequence[CycleRow], rounds: Sequence[RoundSamples], floors_rounds: Sequence[RoundSamples]
) -> dict[str, Any]:
    """The two show rules side by side on the same run (--compare-floors): for the version's own
    rule and for its floors, each cycle's accept rate, ARC per 100 requests, shown rate and model
    calls saved, and the last cycle over cycle 0 with its intervals by file (as learning_summary)."""
    summary: dict[str, Any] = {}
    for rule, prefix in RULES.items():
        samples = rounds if rule == "version" else floors_rounds
        cycles = [
            {
                "cycle": row.cycle,
                "live_version": row.live_version,
                **({"rule": row.rule} if rule == "version" else {}),
                **{name: getattr(row, prefix + name) for name in SIDE_BY_SIDE},
            }
            for row in rows
        ]
        first, last = cycles[0]["shown_rate"], cycles[-1]["shown_rate"]
        summary[rule] = {
            "last_cycle": {figure: ratio_figures(samples[0], [samples[-1]], figure) for figure in FIGURES},
            "shown_rate_change": None if not first or last is None else last / first - 1,
            "cycles": cycles,
        }
    return summary


# The figures rules_summary puts side by side, each a CycleRow column (floors_ for the floors').
SIDE_BY_SIDE = ("requests", "shown_rate", "accept_rate", "arc_per_100", "calls_saved", "mean_reward")


def ratio_figures(first: RoundSamples, after: Sequence[RoundSamples], figure: str) -> dict[str, Any] | None:
    """One learning ratio: by file when there are files to resample, else by request alone."""
    samples = FIGURES[figure][0]
    by_request = ratio_interval(getattr(first, samples), [v for r in after for v in getattr(r, samples)])
    if by_request is None:
        return None
    before, later = figure_totals(first.files, figure), figure_totals(pool([r.files for r in after]), figure)
    by_file = cluster_ratio_interval(before, later)
    return {
        "ratio": by_request[0] if by_file is None else by_file[0],
        # None with fewer than two evaluation files: nothing to resample.
        "ci95": None if by_file is None else list(by_file[1:]),
        "ci95_by_request": list(by_request[1:]),
        "files": len(set(before) & set(later)),
        "power": power_figures(log_ratio_sd(before, later), len(set(before) & set(later))),
    }


def describe_power(power: dict[str, Any] | None) -> str:
    """One line of what a run can tell (intervals.power_figures), for the log."""
    if power is None:
        return "power unknown: fewer than 2 evaluation files, or nothing in cycle 0"
    return (
        "over {files} files a true ratio of {detectable_ratio:.2f}x or more clears {bound}x at the 95%"
        " lower bound with {power:.0%} power; a true {planned}x gets a lower bound near"
        " {lower_bound_if_planned:.2f} ({files_needed} files of this kind for it to clear {bound}x)"
    ).format(**power) + (f"; planned from cycle 0's {power['from']}" if "from" in power else "")


def attack_summary(
    rows: Sequence[CycleRow],
    rounds: Mapping[int, RoundSamples],
    profile: str,
    share: float,
    max_user_share: float,
) -> dict[str, Any]:
    """Against the poisoning criteria: the honest developers' mean reward in each evaluation round
    never below cycle 0's (`rounds`, by cycle, one per evaluated cycle, give each difference a 95%
    bootstrap interval over the episodes: a round's mean moves by a few hundredths between rounds of
    one model), and the attacker's share of each update, evaluated or not, within the per-person cap."""
    base = rows[0].mean_reward
    cycles = [
        {
            "cycle": row.cycle,
            "live_version": row.live_version,
            "honest_mean_reward": row.mean_reward,
            "honest_reward_vs_cycle_0": None
            if row.mean_reward is None or base is None
            else row.mean_reward - base,
            "honest_reward_vs_cycle_0_ci95": None
            if row.cycle not in rounds
            or (interval := difference_interval(rounds[0].rewards, rounds[row.cycle].rewards)) is None
            else list(interval[1:]),
            "attacker_requests_share": row.attacker_requests_share,
            "attacker_kept_share": row.attacker_kept_share,
            "attacker_trained_on": row.attacker_trained_on,
            "trained_on": row.trained_on,
            "attacker_share": row.attacker_share,
        }
        for row in rows
    ]
    later = [c["honest_reward_vs_cycle_0"] for c in cycles[1:] if c["cycle"] in rounds]
    shares = [c["attacker_share"] for c in cycles[1:] if c["attacker_share"] is not None]
    kept = [c["attacker_kept_share"] for c in cycles[1:] if c["attacker_kept_share"] is not None]
    return {
        "attacker": profile,
        "attacker_share_of_requests": share,
        "max_user_share": max_user_share,
        "honest_reward_never_below_cycle_0": all(d is not None and d >= 0 for d in later),
        # Cycles whose whole interval lies below cycle 0's reward.
        "honest_reward_surely_below_cycle_0": [
            c["cycle"]
            for c in cycles[1:]
            if c["honest_reward_vs_cycle_0_ci95"] and c["honest_reward_vs_cycle_0_ci95"][1] < 0
        ],
        "attacker_share_within_cap": all(x <= max_user_share for x in shares),
        "attacker_kept_share_within_cap": all(x <= max_user_share for x in kept),
        "updates": len(shares),
        "cycles": cycles,
    }


def calls_saved(requests: int, episodes: Sequence[dict[str, Any]]) -> float | None:
    """The share of `requests` served without a model call: the episodes whose decision says the
    trigger skipped it (core/wire.py ServingDecision.called)."""
    if not requests:
        return None
    skipped = sum((e.get("decision") or {}).get("called") is False for e in episodes)
    return skipped / requests


def rule_of(episodes: Sequence[dict[str, Any]]) -> str:
    """The rules that decided these episodes ("learned", "floors", "floors+learned"), "" when none
    says (a backend that records no decision)."""
    return "+".join(sorted({e["decision"]["rule"] for e in episodes if e.get("decision")}))


def floors_figures(stats: TypingStats, episodes: Sequence[dict[str, Any]], samples: RoundSamples) -> dict:
    """The floors' evaluation rounds' row figures (CycleRow's floors_ columns)."""
    figures = round_figures(stats, episodes, samples)
    names = ("requests", "shown_rate", "episodes", "accept_rate", "arc_per_100", "mean_reward", "calls_saved")
    return {f"floors_{name}": figures[name] for name in names}


def round_figures(stats: TypingStats, episodes: Sequence[dict[str, Any]], samples: RoundSamples) -> dict:
    """A round's row figures: counts from the editors, rates from the episodes (`samples`)."""
    return {
        "rule": rule_of(episodes),
        "calls_saved": calls_saved(stats.requests, episodes),
        "requests": stats.requests,
        "shown": stats.shown,
        "shown_rate": stats.shown / stats.requests if stats.requests else None,
        "accepted": stats.accepted,
        "fixed": stats.fixed,
        "partial": stats.partial,
        "dismissed": stats.dismissed,
        "episodes": len(episodes),
        "accept_rate": sum(samples.accepted) / len(samples.accepted) if samples.accepted else None,
        "arc_per_100": 100 * sum(samples.kept_per_request) / stats.requests if stats.requests else None,
        "mean_reward": sum(e["reward"] for e in episodes) / len(episodes) if episodes else None,
    }


def simulation_report(
    rows: Sequence[CycleRow],
    *,
    run_id: str,
    started_at: float,
    updated_at: float,
    corpus: str,
    planned_cycles: int,
    settings: dict[str, str | int | float | bool | None],
) -> SimulationReport:
    """The figures so far as the dashboard's wire format; NaN or infinity (a perplexity overflow)
    becomes None, as JSON has neither."""
    cycles = [
        SimulationCycle(**{k: _finite(v) for k, v in dataclasses.asdict(row).items() if k not in CSV_ONLY})
        for row in rows
    ]
    return SimulationReport(
        run_id=run_id,
        started_at=started_at,
        updated_at=updated_at,
        corpus=corpus,
        planned_cycles=planned_cycles,
        settings=settings,
        cycles=cycles,
    )


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_csv(rows: Sequence[CycleRow], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(CycleRow)]
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in dataclasses.asdict(row).items()})
    temporary.replace(path)


def read_csv(path: Path) -> list[CycleRow]:
    """The rows write_csv wrote (figures rounded as written), for drawing a finished run again."""
    types = {f.name: str(f.type) for f in dataclasses.fields(CycleRow)}
    rows = []
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            values: dict[str, Any] = {}
            for name, cell in record.items():
                kind = types.get(name)
                # A column a later version added, or an empty cell: the field's default.
                if kind is None or (cell == "" and kind != "str"):
                    continue
                if kind.startswith("int"):
                    values[name] = int(cell)
                else:
                    values[name] = float(cell) if "float" in kind else cell
            rows.append(CycleRow(**values))
    return rows


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 4) if isinstance(value, float) else value
