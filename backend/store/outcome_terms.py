"""The outcome figures' terms as SQL both databases read alike (sqlite/outcomes.py, postgres/outcomes.py).

Per finalized episode of a model version:
- reward: over trainable episodes (reward not NULL, abstentions included);
- accepted (0/1): over rated episodes (trainable and shown);
- ARC, accepted-and-retained characters: similarity × length of the text for accepted outcomes,
  0 otherwise, over every finalized episode (so "ARC per 100 requests" is 100 × its mean).
"""

from __future__ import annotations

from core.rewards import ABSTAINED, ACCEPTED, PARTIALLY_ACCEPTED

IS_ACCEPTED = f"(e.outcome IN ('{ACCEPTED}', '{PARTIALLY_ACCEPTED}'))"
ARC = f"(CASE WHEN {IS_ACCEPTED} THEN COALESCE(e.similarity, 1.0) * length(c.text) ELSE 0 END)"
IS_RATED = f"(e.reward IS NOT NULL AND e.outcome != '{ABSTAINED}')"
# A time (seconds since the epoch, before the year 5000) or a finite figure. A stored row whose time
# is text, a blob (SQLite) or NaN or infinite (either) falls outside, so it draws no point that cannot
# be shown and no figure JSON cannot carry, and the rest of the chart stays.
A_TIME = "BETWEEN 0 AND 1e11"
FINITE = "BETWEEN -1e308 AND 1e308"


def end_of(until: float | None) -> float:
    """A window's end: open-ended when None."""
    return float("inf") if until is None else until
