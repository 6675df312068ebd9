"""What the user wanted at a completion's spot, as text and as tokens to imitate.

A rejected suggestion's episode carries what the user wrote there instead (the rewrite event), an
accepted-then-edited one the edited text that survived. Either is the completion the user wanted.
The prompt may stop before the word being typed (backend/healing.py), so the wanted text is the
healed part the completion rewrote, then the user's text.
"""

from __future__ import annotations

from typing import Any

from backend.healing import healed_of
from backend.wire import Episode


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


def wanted_ids(tokenizer: Any, episode: Episode, max_tokens: int) -> list[int] | None:
    """The wanted completion's tokens, at most `max_tokens`; None when there is none.

    Encoded on their own: the prompt ends at a token boundary, so for byte-level BPE tokenizers
    (StarCoder, Qwen, the bootstrapped model) these are the tokens that continue it."""
    wanted = wanted_text(completion_text(tokenizer, episode), episode)
    if wanted is None:
        return None
    ids = tokenizer.encode(wanted, add_special_tokens=False)[:max_tokens]
    return ids or None
