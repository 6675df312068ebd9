"""What a version's confidence floor reads: how sure the model was of a completion, and where the
cursor stood when it was asked for.

Where the cursor stands says more about a suggestion's fate than anything else the server knows.
In the middle of a word the model completes an identifier it has mostly seen typed; at the start of
a line or after an opening bracket it guesses a whole new statement or argument, and a small model
is right there a few times in a hundred. So the floor is one threshold per place (trainer/withholding.py).

Confidence is the mean log-prob (at the serving temperature) of the completion's first tokens: a
developer takes a suggestion when it starts with what they were about to write, word by word as
far as it is right, so its first tokens decide its fate more than its tail does.
"""

from __future__ import annotations

from collections.abc import Sequence

# How many of the first sampled tokens the confidence averages.
LEADING_TOKENS = 3

# Where the cursor stands: at the start of a line (only indentation before it), right after a
# letter, digit or underscore (inside or at the end of a word), or after anything else.
LINE_START, IN_WORD, AFTER_SYMBOL = "line_start", "in_word", "after_symbol"
PLACES = (LINE_START, IN_WORD, AFTER_SYMBOL)

# A version's floor at a place, among its checkpoint's metrics: this prefix, then the place.
FLOOR_METRIC_PREFIX = "min_confidence_"


def confidence(token_logprobs: Sequence[float]) -> float:
    """Mean log-prob of the first LEADING_TOKENS sampled tokens; 0 (sure) for none."""
    leading = token_logprobs[:LEADING_TOKENS]
    return sum(leading) / len(leading) if leading else 0.0


def cursor_place(prefix: str) -> str:
    """Where the cursor stands after `prefix`, the document's text before it."""
    line = prefix.rsplit("\n", 1)[-1]
    if not line.strip():
        return LINE_START
    last = line[-1]
    return IN_WORD if last.isalnum() or last == "_" else AFTER_SYMBOL


def withheld(token_logprobs: Sequence[float], floor: float | None) -> bool:
    """Whether a version's floor (None: none where the cursor stands) keeps a completion with
    these log-probs from being shown. An empty completion is an abstention already."""
    return floor is not None and bool(token_logprobs) and confidence(token_logprobs) < floor
