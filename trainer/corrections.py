"""What the user wanted at a completion's spot, as text and as tokens to imitate.

A rejected suggestion's episode carries what the user wrote there instead (the rewrite event), an
accepted-then-edited one the edited text that survived. Either is the completion the user wanted.
The prompt may stop before the word being typed (core/healing.py), so the wanted text is the
healed part the completion rewrote, then the user's text.

Where the wanted text ends is half of what it says. A suggestion asked for in the middle of a line
is the rest of that line (serving ends it at the newline, backend/stops.py), and the user's text
there is theirs up to the line's end; so its tokens are followed by the newline that ends it.
Without that newline the correction teaches only how a line goes on, never where it stops: in a
simulation on `rich` the trained versions' log-prob of the newline at the end of what users wrote
fell from -3.35 (base) to -3.9, their suggestions in a word grew from 15 to 23 characters, and
fewer were taken whole.
"""

from __future__ import annotations

from typing import Any

from core.confidence import AFTER_SYMBOL, IN_WORD
from core.healing import healed_of
from core.rewards import ACCEPTED_OUTCOMES
from core.wire import Episode


def completion_text(tokenizer: Any, episode: Episode) -> str:
    """The sampled completion without its end-of-sequence token."""
    ids = [t for t in episode.completion_ids if t != tokenizer.eos_token_id]
    return tokenizer.decode(ids, skip_special_tokens=False)


def wanted_text(completion: str, episode: Episode) -> str | None:
    """The completion the user wanted, from the prompt's end; None when unknown or the same as the
    sampled one."""
    if not episode.rewrite or not completion:
        return None
    wanted = healed_of(completion, episode.text) + episode.rewrite
    return None if wanted.strip() == completion.strip() else wanted


def ends_its_line(completion: str, episode: Episode) -> bool:
    """Whether the user's text at a mid-line spot ran to the line's end. What they wrote instead of
    a dismissed suggestion is the rest of the line as it stood when the rewrite window closed
    (lsp_server/tracker.py); an edited acceptance's text did when the suggestion itself did (it
    stopped at the newline, not at the token cap)."""
    if episode.place not in (IN_WORD, AFTER_SYMBOL):
        return False
    return episode.outcome not in ACCEPTED_OUTCOMES or "\n" in completion


def wanted_ids(tokenizer: Any, episode: Episode, max_tokens: int) -> list[int] | None:
    """The wanted completion's tokens, at most `max_tokens`; None when there is none.

    Encoded on their own: the prompt ends at a token boundary, so for byte-level BPE tokenizers
    (StarCoder, Qwen, the bootstrapped model) these are the tokens that continue it."""
    completion = completion_text(tokenizer, episode)
    wanted = wanted_text(completion, episode)
    if wanted is None:
        return None
    if ends_its_line(completion, episode) and "\n" not in wanted:
        wanted += "\n"
    ids = tokenizer.encode(wanted, add_special_tokens=False)[:max_tokens]
    return ids or None
