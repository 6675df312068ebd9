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

That newline is the token the text around it makes, not a lone "\n". Byte-level BPE with the GPT-2
pre-tokenizer (StarCoder, the bootstrapped model) joins a line's newline to the next line's
indentation: after an indented line the newline is the token "\n" + spaces, and a lone "\n" only
ever comes before column-0 code. Encoded on its own, the wanted text ended in that lone "\n", which
taught the end of every indented line as "the next line starts at column 0"; it is also not the
token serving samples and records there. After it the model fell into "\n\n\n" loops, and the
gate refused candidates for them (on the tiny test model 26-28 of its 32 prompts looped against
9-10 with the in-context token, base 5). So the wanted text is encoded followed by the next line's
likely indentation and cut after the first token holding the newline; where the suggestion itself
ended at the newline, its own (whitespace) newline token is reused: it is what serving sampled.
The rule "tokenize in context, cut after the newline-bearing token" holds for any tokenizer; one
whose pre-tokenizer never merges a newline with what follows (Qwen's) simply gives "\n" again.
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


# Indentation one block deeper, after a line that opens one (ends in ":").
INDENT_UNIT = "    "


def next_indent(tokenizer: Any, episode: Episode, wanted: str) -> str:
    """The likely indentation of the line after the wanted text: its own line's, one unit deeper
    after a ":". The prompt may stop inside the line, so the line is the prompt's last one plus the
    wanted text."""
    tail = tokenizer.decode(episode.prompt_ids[-256:], skip_special_tokens=True)
    line = tail.rsplit("\n", 1)[-1] + wanted
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if line.rstrip().endswith(":"):
        indent += "\t" if indent.startswith("\t") else INDENT_UNIT
    return indent


def served_newline(tokenizer: Any, episode: Episode) -> int | None:
    """The newline token serving ended the suggestion with, when it is whitespace only (so the
    wanted text's own tokens end before it); None otherwise."""
    ids = [t for t in episode.completion_ids if t != tokenizer.eos_token_id]
    if not ids:
        return None
    last = tokenizer.decode(ids[-1:], skip_special_tokens=False)
    return ids[-1] if "\n" in last and not last.strip() else None


def line_end_ids(tokenizer: Any, episode: Episode, wanted: str) -> list[int]:
    """The wanted text's tokens through the newline that ends its line, as that newline tokenizes
    in context (see the module's docstring)."""
    served = served_newline(tokenizer, episode)
    if served is not None:
        return [*tokenizer.encode(wanted, add_special_tokens=False), served]
    # Any non-space character after the indentation closes the whitespace run the newline is in.
    following = "\n" + next_indent(tokenizer, episode, wanted) + "x"
    ids = tokenizer.encode(wanted + following, add_special_tokens=False)
    for end in range(1, len(ids) + 1):
        if "\n" in tokenizer.decode(ids[:end], skip_special_tokens=False):
            return ids[:end]
    return ids


def wanted_ids(tokenizer: Any, episode: Episode, max_tokens: int) -> list[int] | None:
    """The wanted completion's tokens, at most `max_tokens`; None when there is none.

    The prompt ends at a token boundary, so for byte-level BPE tokenizers (StarCoder, Qwen, the
    bootstrapped model) the wanted text's own tokens continue it; a line-ending newline is the
    token it makes in context (line_end_ids)."""
    completion = completion_text(tokenizer, episode)
    wanted = wanted_text(completion, episode)
    if wanted is None:
        return None
    if ends_its_line(completion, episode) and "\n" not in wanted:
        ids = line_end_ids(tokenizer, episode, wanted)
    else:
        ids = tokenizer.encode(wanted, add_special_tokens=False)
    return ids[:max_tokens] or None
