"""Prompt healing: the prompt stops at a token boundary before the cursor, and decoding is held to
rewrite the text it left out.

A prompt that ends inside a token's text ends where no training text was ever split. Byte-level
BPE keeps a run of spaces with the word after it, and a word with the space before it, so a prompt
ending in typed indentation or in the first letters of a name is a sequence the model never saw,
and it answers badly (after `import co` it starts a new word instead of finishing `copy`). So the
prompt stops before that text (the healed text), the first tokens sampled are restricted to those
that spell it out, and what is shown is what comes after it.

The log-probabilities recorded for those first tokens are the model's unrestricted ones, the same
the trainer computes again from the prompt and the tokens: the restriction belongs to the serving
side, like the stop rules, and the trainer's importance ratios stay exact.
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The name being typed at the cursor, with the blank before it (BPE merges the two).
_WORD = re.compile(r"[ \t]?\w+$")
# Longer fragments are left in the prompt: rewriting them costs decoding steps for little gain.
MAX_HEALED_CHARS = 32


def healed_text(prefix: str) -> str:
    """The text before the cursor that the prompt leaves out: the line itself when it holds only
    indentation, or indentation and one word; the word being typed (with its blank) mid-line."""
    line = prefix.rsplit("\n", 1)[-1]
    word = _WORD.search(line)
    if not line.strip() or (word and not line[: word.start()].strip()):
        healed = line
    else:
        healed = word.group() if word else ""
    return healed if len(healed) <= MAX_HEALED_CHARS else ""


def after_healed(text: str, healed: str) -> str:
    """`text` less the healed text it starts with; "" (nothing to show) when it does not."""
    return text[len(healed) :] if text.startswith(healed) else ""


def healed_of(completion: str, shown: str) -> str:
    """The healed text a completion wrote before the text shown, for the trainer, which has the
    completion and what was shown but not the prefix: the shortest head after which `shown`
    starts."""
    for cut in range(len(completion) - len(shown) + 1):
        if completion.startswith(shown, cut):
            return completion[:cut]
    return ""


class TokenTexts:
    """Each token's text as it reads inside a sequence, and which tokens may come next while the
    healed text is being rewritten: those whose text starts with what is left of it, or is a
    non-empty part of its start."""

    def __init__(self, tokenizer: Any, eos_token_id: int | None) -> None:
        # torch only here: the rules above the engine read this module in a process without it.
        import torch

        vocab_size = len(tokenizer)
        # Decoded after an anchor token: SentencePiece tokenizers drop a token's leading space
        # when it is decoded alone. Special tokens read as nothing, as the shown text has them.
        anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
        skip = len(tokenizer.decode(anchor))
        special = set(tokenizer.all_special_ids)
        self.texts = [
            "" if i in special else tokenizer.decode([*anchor, i])[skip:] for i in range(vocab_size)
        ]
        order = sorted(range(vocab_size), key=self.texts.__getitem__)
        self._sorted = [self.texts[i] for i in order]
        self._ids = torch.tensor(order, dtype=torch.long)
        self._by_text: dict[str, list[int]] = {}
        for i, text in enumerate(self.texts):
            if text:
                self._by_text.setdefault(text, []).append(i)
        self.eos_token_id = eos_token_id

    def text(self, token: int) -> str:
        return self.texts[token] if token < len(self.texts) else ""

    def allowed(self, remaining: str, may_end: bool) -> torch.Tensor:
        """Token ids that keep the completion on the way to `remaining`, and the end of text where
        `may_end` (as the first token: abstaining is always allowed)."""
        import torch

        # Tokens of empty text (special ones) sort first and never match: `remaining` is not empty.
        low = bisect.bisect_left(self._sorted, remaining)
        # Every string that starts with `remaining` sorts below `remaining` + the largest code point.
        high = bisect.bisect_left(self._sorted, remaining + "\U0010ffff", lo=low)
        parts = [self._ids[low:high]]
        for end in range(1, len(remaining)):
            parts.append(torch.tensor(self._by_text.get(remaining[:end], []), dtype=torch.long))
        if may_end and self.eos_token_id is not None:
            parts.append(torch.tensor([self.eos_token_id], dtype=torch.long))
        return torch.cat(parts)
