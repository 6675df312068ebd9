"""General code the policy update keeps predicting: the pretraining mix of PPO-ptx (Ouyang et al.
2022, "InstructGPT"), here plain next-token loss on windows of ordinary Python.

Imitating a team's corrections teaches the model their code, and on its own it also pulls the model
away from everything else: in `make simulate` the correction term raised the held-out perplexity
3.5-6.7% in one cycle, past the gate. A little language modelling on general code beside it
holds the rest of what the model knows in place. Beside that NLL (toward the data), a KL to the base
on the same windows (`replay_kl_coef`, replay_terms) keeps the model's general code where the base
had it, so drift cannot add up over cycles.

The windows come from the standard library files outside the fixed held-out split
(trainer/corpus.py), so the gate's perplexity text is never trained on, and from any extra
directories configured (`trainer.replay_sources`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainer.corpus import (
    SKIP_DIRS,
    STDLIB_TEST_DIRS,
    SourceFile,
    find_sources,
    is_held_out,
    read_source,
    stdlib_dir,
)

STDLIB = "stdlib"
# Spread the windows over many files: one big module would otherwise fill a cycle's set alone.
WINDOWS_PER_FILE = 8


def replay_files(sources: Sequence[str]) -> list[SourceFile]:
    """The files of the configured sources ("stdlib" or directories), held-out files left out."""
    files: list[SourceFile] = []
    for source in sources:
        if source == STDLIB:
            files += find_sources(stdlib_dir(), STDLIB, SKIP_DIRS | STDLIB_TEST_DIRS)
            continue
        root = Path(source).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"trainer.replay_sources: no directory {root}")
        files += find_sources(root, root.resolve().name)
    return [f for f in files if not is_held_out(f.key)]


@dataclass(frozen=True)
class ReplayText:
    """Token windows of general code, each `window + 1` tokens (inputs plus the shifted targets)."""

    windows: tuple[tuple[int, ...], ...]

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """[count, window + 1] token ids, drawn with replacement."""
        picks = torch.randint(len(self.windows), (count,), generator=generator).tolist()
        return torch.tensor([self.windows[i] for i in picks])


def load_replay(
    tokenizer: Any, sources: Sequence[str], window: int, max_windows: int, seed: int
) -> ReplayText:
    """Up to `max_windows` windows, at most WINDOWS_PER_FILE from each file, the files read in an
    order fixed by `seed`."""
    files = replay_files(sources)
    if not files:
        raise ValueError(f"trainer.replay_sources {list(sources)} hold no Python files")
    random.Random(seed).shuffle(files)
    windows: list[tuple[int, ...]] = []
    for source in files:
        text = read_source(source.path)
        if not text:
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)
        starts = range(0, len(ids) - window, window)
        # Spread through the file: its head alone is mostly licence, docstring and imports.
        step = max(1, len(starts) // WINDOWS_PER_FILE)
        windows += [tuple(ids[s : s + window + 1]) for s in starts[::step][:WINDOWS_PER_FILE]]
        if len(windows) >= max_windows:
            break
    if not windows:
        raise ValueError(f"trainer.replay_sources {list(sources)}: no file is {window + 1} tokens long")
    return ReplayText(tuple(windows[:max_windows]))


def replay_loss(model: torch.nn.Module, windows: Tensor) -> Tensor:
    """Mean next-token negative log-likelihood over the windows [B, window + 1]."""
    return replay_terms(model, windows, with_kl=False)[0]


def replay_terms(model: Any, windows: Tensor, with_kl: bool) -> tuple[Tensor, Tensor | None]:
    """(mean next-token NLL, mean per-token KL(base ‖ policy) or None) over the windows [B, window + 1].

    The KL is exact over the vocabulary, the base being the same peft model with its adapter
    switched off (no gradient through it). It is a trust region to the base on general code, where
    the NLL pulls toward the data: the NLL leaves free whatever the windows do not pin down, so small
    moves add up over cycles against the gate's fixed limit to the base; the KL holds the whole
    next-token distribution where the base had it, and a KL of ε per token on code like the gate's
    bounds its log-perplexity rise by about ε."""
    inputs = windows[:, :-1]
    logits = model(input_ids=inputs, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
    if not with_kl:
        return nll, None
    with torch.no_grad(), model.disable_adapter():
        base = torch.log_softmax(model(input_ids=inputs, use_cache=False).logits.float(), dim=-1)
    own = torch.log_softmax(logits, dim=-1).flatten(0, 1)
    # "batchmean" over the flattened positions: a per-token mean.
    kl = torch.nn.functional.kl_div(own, base.flatten(0, 1), log_target=True, reduction="batchmean")
    return nll, kl
