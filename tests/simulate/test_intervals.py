"""The learning ratios' intervals resampled by file, and the power figure, on synthetic rounds whose
files differ (requests in one file share its difficulty, and the model's gain differs by file)."""

from __future__ import annotations

import numpy as np
import pytest

from simulate.intervals import between_rounds_sd, cluster_ratio_interval, log_ratio_sd, power_figures
from simulate.report import ratio_interval

TRUE_RATIO = 1.3


def rounds(seed: int, files: int, requests: int = 60) -> tuple[dict, dict, list[float], list[float]]:
    """Cycle 0 and a later cycle over the same files: per-file (accepted, rated) totals and the flat
    per-request outcomes. Each file has its own accept rate, and the gain is TRUE_RATIO on average
    over files (a lognormal spread around it with that mean)."""
    rng = np.random.default_rng(seed)
    before, after, flat_before, flat_after = {}, {}, [], []
    for f in range(files):
        rate = rng.uniform(0.05, 0.35)
        gain = TRUE_RATIO * np.exp(rng.normal(0, 0.3) - 0.3**2 / 2)
        first = (rng.random(requests) < rate).astype(float)
        later = (rng.random(requests) < rate * gain).astype(float)
        before[f"f{f}.py"], after[f"f{f}.py"] = (first.sum(), requests), (later.sum(), requests)
        flat_before += list(first)
        flat_after += list(later)
    return before, after, flat_before, flat_after


def test_resampling_by_file_is_wider_than_by_request_and_covers_the_true_ratio() -> None:
    before, after, flat_before, flat_after = rounds(0, files=8)
    ratio, low, high = cluster_ratio_interval(before, after)
    by_request = ratio_interval(flat_before, flat_after)
    assert by_request is not None and ratio == pytest.approx(by_request[0])
    assert high - low > by_request[2] - by_request[1]
    # Fixed seed: the same report from the same figures.
    assert cluster_ratio_interval(before, after) == (ratio, low, high)
    # Over many runs, by file the interval holds the true ratio about 95% of the time; by request
    # it is too narrow for files that differ.
    covered_by_file = covered_by_request = 0
    runs = 100
    for seed in range(1, runs + 1):
        before, after, flat_before, flat_after = rounds(seed, files=12)
        _, low, high = cluster_ratio_interval(before, after, resamples=500, seed=seed)
        _, low_r, high_r = ratio_interval(flat_before, flat_after, resamples=500, seed=seed)
        covered_by_file += low <= TRUE_RATIO <= high
        covered_by_request += low_r <= TRUE_RATIO <= high_r
    assert covered_by_file / runs >= 0.85 and covered_by_request < covered_by_file - 5


def test_one_file_has_no_interval_by_file() -> None:
    assert cluster_ratio_interval({"a.py": (3.0, 10.0)}, {"a.py": (5.0, 10.0)}) is None
    assert log_ratio_sd({"a.py": (3.0, 10.0)}) is None and power_figures(None, 1) is None
    # Nothing accepted in cycle 0: no ratio, rather than an infinite one.
    assert cluster_ratio_interval({"a.py": (0.0, 9.0), "b.py": (0.0, 9.0)}, {"a.py": (1.0, 9.0)}) is None


def test_the_power_figure_improves_with_more_files_of_the_same_kind() -> None:
    before = rounds(0, files=8)[0]
    # The same files four times over: the same per-file spread, four times the files.
    more = {f"{copy}-{name}": totals for copy in range(4) for name, totals in before.items()}
    few, many = power_figures(log_ratio_sd(before), 8), power_figures(log_ratio_sd(more), 32)
    assert few is not None and many is not None
    assert many["sd_log_ratio"] == pytest.approx(few["sd_log_ratio"] / 2, rel=0.1)
    assert 1.1 < many["detectable_ratio"] < few["detectable_ratio"]
    assert few["lower_bound_if_planned"] < many["lower_bound_if_planned"] < 1.3
    # The files asked for do not depend on how many were measured, only on their spread.
    assert many["files_needed"] == pytest.approx(few["files_needed"], rel=0.15)
    # Enough files: a true 1.3x clears 1.1x (the planning figure leaves pairing out: it errs high).
    enough = {f"{copy}-{name}": t for copy in range(few["files_needed"]) for name, t in before.items()}
    planned = power_figures(log_ratio_sd(enough), len(enough))
    assert planned is not None and planned["lower_bound_if_planned"] > 1.1
    assert planned["detectable_ratio"] <= 1.3


def test_cycle_0s_rounds_plan_from_seed_noise_alone() -> None:
    """Rounds of one model over the same files differ by seeds only: paired by file, their noise is
    far below what the files' own differences add, and falls with more rounds."""
    rng = np.random.default_rng(3)
    rates = rng.uniform(0.02, 0.4, size=12)

    def round_of() -> dict[str, tuple[float, float]]:
        return {f"f{f}.py": (float((rng.random(60) < rate).sum()), 60.0) for f, rate in enumerate(rates)}

    rounds = [round_of() for _ in range(4)]
    unpaired = log_ratio_sd(rounds[0])
    two, four = between_rounds_sd(rounds[:2]), between_rounds_sd(rounds)
    assert between_rounds_sd(rounds[:1]) is None and two is not None and four is not None
    assert two < unpaired / 2 and four < two
