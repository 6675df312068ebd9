"""Where a mid-line correction ends: the newline token as the text around it tokenizes it."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from core.wire import Episode
from trainer.corrections import wanted_ids

# The prompt stops inside an indented line; the user wrote the rest of it.
PROMPT = "class Box:\n    def total(self):\n        value = self.cou"
NEXT_LINE = "        return value\n"


def mid_line(tokenizer, completion: str, rewrite: str, outcome: str = "rejected") -> Episode:
    return Episode(
        seq=1,
        completion_id="c1",
        user_id="u",
        model_version="base",
        prompt_ids=tokenizer.encode(PROMPT, add_special_tokens=False),
        completion_ids=tokenizer.encode(completion, add_special_tokens=False),
        token_logprobs=[-1.0] * len(tokenizer.encode(completion, add_special_tokens=False)),
        temperature=0.7,
        text=completion,
        outcome=outcome,
        reward=-0.25,
        created_at=0.0,
        finalized_at=0.0,
        rewrite=rewrite,
        place="in_word",
    )


def test_an_indented_mid_line_correction_ends_with_the_newline_token_of_its_context(
    tiny_model_dir: Path,
) -> None:
    """The test model's byte-level BPE joins a newline to the next line's indentation; the last
    wanted token is that token ("\\n" + spaces), never the lone "\\n" that only ever precedes
    column-0 code."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lone = tokenizer.encode("\n", add_special_tokens=False)
    episode = mid_line(tokenizer, "nt + 1", "nt * 2")
    ids = wanted_ids(tokenizer, episode, 64)
    assert ids is not None
    last = tokenizer.decode(ids[-1:])
    assert last.startswith("\n") and len(last) > 1 and not last.strip(), repr(last)
    assert ids[-1:] != lone
    assert tokenizer.decode(ids).startswith("nt * 2\n ")
    # It is the token the whole text has there.
    whole = tokenizer.encode(PROMPT + "nt * 2\n" + NEXT_LINE, add_special_tokens=False)
    assert ids[-1] in whole

    # After a line that opens a block, one indent deeper: still newline plus spaces.
    opening = mid_line(tokenizer, "nt + 1", "nt > 2:")
    opened = wanted_ids(tokenizer, opening, 64)
    assert opened is not None and tokenizer.decode(opened[-1:]).startswith("\n ")

    # An edited acceptance whose suggestion ended at the newline: serving's own newline token.
    served = tokenizer.encode("nt + 1\n" + NEXT_LINE, add_special_tokens=False)
    cut = next(k for k in range(len(served)) if "\n" in tokenizer.decode(served[: k + 1]))
    edited = mid_line(tokenizer, tokenizer.decode(served[: cut + 1]), "nt * 2", outcome="accepted")
    edited_ids = wanted_ids(tokenizer, edited, 64)
    assert edited_ids is not None and edited_ids[-1] == served[cut]
