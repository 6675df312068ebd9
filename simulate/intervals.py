"""Intervals and power of the learning ratios (a cycle's figure over cycle 0's), resampled by file.

Both figures are ratios of totals: accept rate = accepted / rated suggestions, ARC per request =
kept characters / requests. Requests in one file are not independent (a file that suits the model
gets many suggestions taken), so the unit of resampling is the evaluation file, with every
developer's and every round's requests in it pooled. Per file f, numerator and denominator at
cycle 0 (x_f, n_f) and at the cycle compared (y_f, m_f); X, N, Y, M their sums over the F files:

    ratio = (Y / M) / (X / N)

Interval: a paired cluster bootstrap. Every cycle evaluates the same files with the same seeds, so
a resample draws F files with replacement and each drawn file brings both its cycles' totals; what
a file's difficulty adds to both sides cancels, what the model changed differently per file stays.
The percentiles of log(ratio) are widened by √(F / (F − 1)) around the estimate, as a resample of F
among F files varies less than F fresh files would. Few files still cover less than 95%: over 300
synthetic runs of 10 files whose gain differs by file (tests/simulate/test_intervals.py's), 89%
(88% unwidened; 84% resampled by request), 92% over 20 files.

Spread, for power: the delta method on log(ratio), whose influence of file f is
    z_f = y_f / Y − m_f / M − (x_f / X − n_f / N),    var(log ratio) ≈ F / (F − 1) · Σ z_f².
Before a run has a cycle to compare, cycle 0 alone gives the planning figure. With two rounds or
more (--eval-rounds), its even rounds against its odd ones, paired by file: what differs between
them is the seeds alone, as between two cycles of one model, so this is the noise a comparison
cannot avoid (scaled to N rounds against N, as seed noise falls with rounds); it leaves out a gain
that lands differently on different files, so it errs low. With one round, the cycle compared is
taken to vary file to file as cycle 0 does and independently of it, var ≈ 2 · F / (F − 1) · Σ u_f²
with u_f = x_f / X − n_f / N: that counts the files' own difficulty, which pairing cancels, so it
errs high, by far when files differ in difficulty. Both fall as 1 / F with more files of the same
kind, which sizes --eval-files. With few files either is rough (two files give it one degree of
freedom).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

# A file's (numerator, denominator) totals, by file name.
Totals = Mapping[str, tuple[float, float]]

Z_95 = NormalDist().inv_cdf(0.975)
# The ratio the learning criteria want the 95% lower bound above, and the true ratio to plan for.
BOUND = 1.1
PLANNED = 1.3
POWER = 0.8


def _paired(before: Totals, after: Totals) -> np.ndarray:
    """(F, 4) array of x, n, y, m over the files both sides evaluated."""
    names = sorted(set(before) & set(after))
    return np.array([[*before[name], *after[name]] for name in names], dtype=float).reshape(-1, 4)


def cluster_ratio_interval(
    before: Totals, after: Totals, resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float] | None:
    """ratio with its 95% percentile interval from the paired cluster bootstrap over files; None
    with fewer than two files (one file has no file-to-file spread to resample) or no ratio."""
    files = _paired(before, after)
    x, n, y, m = files.sum(axis=0)
    if len(files) < 2 or not (x > 0 and n > 0 and m > 0):
        return None
    draws = np.random.default_rng(seed).integers(len(files), size=(resamples, len(files)))
    xs, ns, ys, ms = files[draws].sum(axis=1).T
    # A resample with nothing in cycle 0 (or no requests after) has no ratio; it is left out.
    ok = (xs > 0) & (ns > 0) & (ms > 0)
    ratio = (y / m) / (x / n)
    log_ratios = np.log((ys[ok] / ms[ok]) / (xs[ok] / ns[ok]))
    spread = math.sqrt(len(files) / (len(files) - 1)) * (
        np.percentile(log_ratios, [2.5, 97.5]) - math.log(ratio)
    )
    low, high = ratio * np.exp(spread)
    return float(ratio), float(low), float(high)


def log_ratio_sd(before: Totals, after: Totals | None = None) -> float | None:
    """Standard deviation of log(ratio) by the delta method over files: paired with `after`, or
    the planning figure from `before` (cycle 0) alone; None with fewer than two files."""
    if after is None:
        files = _paired(before, before)[:, :2]
        sums = files.sum(axis=0)
        if len(files) < 2 or not (sums > 0).all():
            return None
        u = files[:, 0] / sums[0] - files[:, 1] / sums[1]
        return math.sqrt(2 * len(u) / (len(u) - 1) * float(np.sum(u**2)))
    files = _paired(before, after)
    sums = files.sum(axis=0)
    if len(files) < 2 or not (sums > 0).all():
        return None
    z = files[:, 2] / sums[2] - files[:, 3] / sums[3] - (files[:, 0] / sums[0] - files[:, 1] / sums[1])
    return math.sqrt(len(z) / (len(z) - 1) * float(np.sum(z**2)))


def between_rounds_sd(rounds: Sequence[Totals]) -> float | None:
    """The planning sd from cycle 0's rounds alone (see above); None with fewer than two rounds."""
    if len(rounds) < 2:
        return None
    even, odd = rounds[0::2], rounds[1::2]
    sd = log_ratio_sd(_pooled(even), _pooled(odd))
    if sd is None:
        return None
    # Seed noise in log(ratio) has variance ∝ 1/rounds_before + 1/rounds_after.
    return sd * math.sqrt((2 / len(rounds)) / (1 / len(even) + 1 / len(odd)))


def _pooled(rounds: Sequence[Totals]) -> dict[str, tuple[float, float]]:
    pooled: dict[str, tuple[float, float]] = {}
    for totals in rounds:
        for name, (top, bottom) in totals.items():
            before = pooled.get(name, (0.0, 0.0))
            pooled[name] = (before[0] + top, before[1] + bottom)
    return pooled


def detectable_ratio(sd: float, bound: float = BOUND, power: float = POWER) -> float:
    """The smallest true ratio whose 95% lower bound clears `bound` with probability `power`: its
    log estimate must land 1.96 sd above log(bound), which it does `power` of the time when the
    truth sits a further z(power) sd higher."""
    return bound * math.exp((Z_95 + NormalDist().inv_cdf(power)) * sd)


def expected_lower_bound(sd: float, true_ratio: float = PLANNED) -> float:
    """The 95% lower bound a true ratio gets in a typical run (its estimate on the truth)."""
    return true_ratio * math.exp(-Z_95 * sd)


def files_needed(
    sd: float, files: int, true_ratio: float = PLANNED, bound: float = BOUND, power: float = POWER
) -> int:
    """Evaluation files of the same kind for `true_ratio` to clear `bound` with `power`, from the
    spread `sd` measured over `files` files (the variance falls as 1 / files)."""
    target = math.log(true_ratio / bound) / (Z_95 + NormalDist().inv_cdf(power))
    return max(2, math.ceil(files * (sd / target) ** 2))


def power_figures(sd: float | None, files: int) -> dict[str, float | int] | None:
    """What a run with this spread can tell, for the summary and the log."""
    if sd is None:
        return None
    return {
        "files": files,
        "sd_log_ratio": sd,
        # The smallest true ratio whose 95% lower bound clears BOUND with POWER.
        "detectable_ratio": detectable_ratio(sd),
        # The 95% lower bound a true PLANNED ratio typically gets, and the files it needs to clear BOUND.
        "lower_bound_if_planned": expected_lower_bound(sd),
        "files_needed": files_needed(sd, files),
        "bound": BOUND,
        "power": POWER,
        "planned": PLANNED,
    }
