"""Where a mid-line correction ends: the newline token as the text around it tokenizes it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from trainer_support import one_thread
from transformers import AutoTokenizer

from core.config import GateConfig, TrainerConfig
from core.wire import Episode
from trainer.corpus import SKIP_DIRS, STDLIB_TEST_DIRS, find_sources, is_held_out, read_source, stdlib_dir
from trainer.corrections import wanted_ids
from trainer.gate import degenerate_counts, degenerate_failures, degenerate_prompts
from trainer.objectives.pg import PGConfig
from trainer.policy import load_policy
from trainer.update import train_on_episodes

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


def mid_line_corrections(tokenizer, count: int, seed: int = 0) -> list[Episode]:
    """Rejections in the middle of indented lines of ordinary code (standard library files the gate
    does not read), each corrected by the rest of its line."""
    rng = random.Random(seed)
    found = find_sources(stdlib_dir(), "stdlib", SKIP_DIRS | STDLIB_TEST_DIRS)
    files = sorted((f for f in found if not is_held_out(f.key)), key=lambda f: f.key)
    rng.shuffle(files)
    episodes: list[Episode] = []
    for source in files[:60]:
        lines = (read_source(source.path) or "").split("\n")
        for i in range(1, len(lines) - 1):
            line, body = lines[i], lines[i].strip()
            if len(body) < 12 or not line.startswith("    ") or not lines[i + 1].strip() or body[0] in "#\"":
                continue
            cut = rng.randrange(len(line) - len(body) + 4, len(line) - 3)
            prefix = ("\n".join(lines[:i]) + "\n" + line[:cut])[-600:]
            episode = mid_line(tokenizer, " pass", line[cut:])
            prompt = tokenizer.encode(prefix, add_special_tokens=False)[-200:]
            update = {"seq": len(episodes), "prompt_ids": prompt, "reward": 0.0}
            episodes.append(episode.model_copy(update=update))
    rng.shuffle(episodes)
    return episodes[:count]


@pytest.mark.usefixtures(one_thread.__name__)
def test_imitating_mid_line_corrections_leaves_no_repetition_loops_for_the_gate(tiny_model_dir: Path) -> None:
    """40 steps of imitating corrections that end mid-line: with a lone "\\n" at their end the tiny
    model's greedy continuations of the gate's prompts looped on 21-24 of 32 (base 5), and the gate
    refused it; with the newline token of their context on 5-7, within the gate's allowance."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = mid_line_corrections(tokenizer, 40 * 8)
    torch.manual_seed(0)
    policy = load_policy(str(tiny_model_dir), None, TrainerConfig(), torch.device("cpu"))
    gate = GateConfig()
    prompts = degenerate_prompts(gate)
    with policy.disable_adapter():
        base = degenerate_counts(policy, tokenizer, prompts)
    # The correction term alone: no policy gradient (every reward 0), no KL, no replay.
    config = PGConfig(kl_coef=0.0, replay_coef=0.0, replay_kl_coef=0.0, kl_sample=0.01)
    wanted = [wanted_ids(tokenizer, e, 64) for e in episodes]
    train_on_episodes(
        policy, episodes, config, learning_rate=5e-4, batch_size=8, epochs=1, wanted=wanted,
        measure_kl_after=False,
    )
    after = degenerate_counts(policy, tokenizer, prompts)
    assert not degenerate_failures(after, base, gate), (after, base)
