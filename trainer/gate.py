"""The eval gate: checks a candidate adapter before any user sees it.

Three checks, each against a reference measured in the same process:
    reward       self-normalized importance sampling (SNIS) estimate of the candidate's mean reward
                 on held-out episodes, against the same estimate for the live (parent) version:
                     w_i = exp(log π(y_i|x_i) − log μ(y_i|x_i)),   V̂(π) = Σ w_i r_i / Σ w_i
                 with μ the serving policy; skipped (not failed) when the effective sample size
                 (Σ w)² / Σ w² is too small to tell.
    perplexity   on a fixed held-out code set (the standard library files the bootstrap corpus holds
                 out, trainer/corpus.py): it may rise at most `max_ppl_increase` over the base model's
                 (a hard outer limit), and inside that it may not be worse than the parent's (the live
                 version's, measured on the same windows) by more than `max_ppl_increase_over_parent`
                 with 95% confidence (a paired bootstrap over the windows). A fixed limit to the base
                 alone ratchets: drift adds up over cycles until one noisy measurement refuses every
                 update (3.1% against 3%, with ±3% between consecutive versions); judged against its
                 parent, a candidate that brings the drift back down always passes.
    degenerate   greedy continuations of fixed prompts: not all empty, and at most
                 `max_extra_loop_share` of the prompts more repetition loops than the base model.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel

from core.config import GateConfig
from core.wire import Episode, GateResult
from trainer.corpus import SKIP_DIRS, STDLIB_TEST_DIRS, find_sources, is_held_out, read_source, stdlib_dir
from trainer.logprobs import completion_logprobs
from trainer.update import episode_batch

PPL_WINDOW = 256
DEGENERATE_NEW_TOKENS = 24
# Prompts cut from the held-out code for the degenerate-output check, beside the fixed ones: with
# eight prompts a weak model's greedy loops flip on two or three of them for a change that barely
# moves it (KL 0.01), so the check compares shares over more prompts.
DEGENERATE_CODE_PROMPTS = 24
DEGENERATE_PROMPT_CHARS = 300
# The perplexity check's paired bootstrap over its windows: resamples and one-sided confidence.
PPL_BOOTSTRAP = 2000
PPL_CONFIDENCE = 0.95
# Fixed prompts for the degenerate-output check: ordinary code at natural completion points.
DEGENERATE_PROMPTS = (
    "import os\n\n\ndef read_config(path):\n    with open(path) as handle:\n        ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    ",
    "for index, value in enumerate(values):\n    ",
    "import json\n\ndata = json.loads(",
    "def main():\n    parser = argparse.ArgumentParser()\n    ",
    "try:\n    result = compute()\nexcept ValueError as error:\n    ",
    "total = 0\nfor line in lines:\n    total += ",
)


def split_heldout(episodes: Sequence[Episode], share: float) -> tuple[list[Episode], list[Episode]]:
    """(train, held out), decided by a hash of the completion id: the same episode always lands on
    the same side, whichever cycle or machine sees it."""
    train, heldout = [], []
    for episode in episodes:
        digest = hashlib.sha256(episode.completion_id.encode()).digest()
        (heldout if int.from_bytes(digest[:4], "big") % 10_000 < share * 10_000 else train).append(episode)
    return train, heldout


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, episodes: Sequence[Episode], batch_size: int = 16) -> torch.Tensor:
    """log π(y|x) of each episode's whole completion under `model`, [N] on the CPU."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(episodes), batch_size):
        batch = episode_batch(episodes[start : start + batch_size], device)
        out.append(completion_logprobs(model, batch).sum(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def snis(target_logps: torch.Tensor, episodes: Sequence[Episode]) -> tuple[float, float]:
    """(estimated mean reward under the target policy, effective sample size)."""
    behaviour = torch.tensor([sum(e.token_logprobs) for e in episodes])
    rewards = torch.tensor([e.reward for e in episodes])
    weights = torch.softmax(target_logps.double() - behaviour.double(), dim=0)
    return float((weights * rewards.double()).sum()), float(1.0 / (weights**2).sum())


@functools.cache
def heldout_code_parts(chars: int) -> tuple[tuple[str, str], ...]:
    """(source key, text) of the fixed held-out code set: held-out stdlib files in key order, up to
    `chars` characters in all."""
    parts, total = [], 0
    for source in find_sources(stdlib_dir(), "stdlib", SKIP_DIRS | STDLIB_TEST_DIRS):
        if total >= chars or not is_held_out(source.key):
            continue
        text = read_source(source.path)
        if text:
            parts.append((source.key, text[: chars - total]))
            total += len(parts[-1][1])
    if not parts:
        raise RuntimeError("no held-out standard library files found for the perplexity check")
    return tuple(parts)


def heldout_code(chars: int) -> str:
    """The fixed held-out code set the perplexity check reads."""
    return "\n\n".join(text for _, text in heldout_code_parts(chars))


@dataclass(frozen=True)
class WindowLosses:
    """Summed next-token loss and token count of each non-overlapping window of a text."""

    sums: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.sums) / max(sum(self.counts), 1))


@torch.no_grad()
def window_losses(model: torch.nn.Module, token_ids: list[int]) -> WindowLosses:
    device = next(model.parameters()).device
    sums, counts = [], []
    for start in range(0, len(token_ids) - 1, PPL_WINDOW):
        window = torch.tensor([token_ids[start : start + PPL_WINDOW + 1]], device=device)
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window[:, :-1], use_cache=False).logits.float()
        sums.append(float(torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")))
        counts.append(window.shape[1] - 1)
    return WindowLosses(tuple(sums), tuple(counts))


def perplexity(model: torch.nn.Module, token_ids: list[int]) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the text."""
    return window_losses(model, token_ids).ppl


def heldout_ids(tokenizer, config: GateConfig) -> list[int]:
    return tokenizer.encode(heldout_code(config.ppl_chars), add_special_tokens=False)


def measure_parent(model: torch.nn.Module, tokenizer, config: GateConfig) -> WindowLosses:
    """The live weights' losses on the perplexity check's windows, before the update changes them."""
    return window_losses(model, heldout_ids(tokenizer, config))


@dataclass(frozen=True)
class PerplexityVerdict:
    rise_over_base: float
    # None without the parent's windows.
    rise_over_parent: float | None
    # One-sided lower confidence bound of the rise over the parent.
    rise_over_parent_lower: float | None
    failures: tuple[str, ...]


def perplexity_verdict(
    candidate: WindowLosses,
    parent: WindowLosses | None,
    base_ppl: float,
    config: GateConfig,
    seed: int = 0,
) -> PerplexityVerdict:
    """The perplexity criterion: refused when (a) the rise over the base is above the outer limit,
    or (b) the candidate is worse than its parent by more than `max_ppl_increase_over_parent`
    with PPL_CONFIDENCE: the bound is a percentile of the paired bootstrap over windows of the
    token-weighted mean log-perplexity difference (candidate − parent)."""
    failures = []
    rise = candidate.ppl / base_ppl - 1.0
    if rise > config.max_ppl_increase:
        failures.append(
            f"held-out perplexity {candidate.ppl:.3f} is {rise:+.1%} over the base's {base_ppl:.3f}"
            f" (limit {config.max_ppl_increase:.1%})"
        )
    if parent is None or len(parent.sums) != len(candidate.sums) or not candidate.sums:
        return PerplexityVerdict(rise, None, None, tuple(failures))
    diffs = np.array(candidate.sums) - np.array(parent.sums)
    counts = np.array(candidate.counts, dtype=float)
    mean = diffs.sum() / counts.sum()
    picks = np.random.default_rng(seed).integers(len(diffs), size=(PPL_BOOTSTRAP, len(diffs)))
    lower = float(np.quantile(diffs[picks].sum(axis=1) / counts[picks].sum(axis=1), 1 - PPL_CONFIDENCE))
    over_parent, bound = math.expm1(mean), math.expm1(lower)
    # A candidate no worse than its parent always passes, whatever the resampling says.
    if mean > 0 and bound > config.max_ppl_increase_over_parent:
        failures.append(
            f"held-out perplexity {over_parent:+.2%} over the parent's (95% lower bound {bound:+.2%},"
            f" limit {config.max_ppl_increase_over_parent:.1%})"
        )
    return PerplexityVerdict(rise, over_parent, bound, tuple(failures))


def is_loop(ids: list[int], repeats: int = 4, max_period: int = 8) -> bool:
    """The output ends in the same 1–8 token pattern `repeats` times over."""
    for period in range(1, max_period + 1):
        tail = ids[-period * repeats :]
        if len(tail) == period * repeats and all(tail[i] == tail[i % period] for i in range(len(tail))):
            return True
    return False


def degenerate_prompts(config: GateConfig) -> tuple[str, ...]:
    """The fixed prompts, then prompts cut from the held-out code: the text before the first
    non-blank character of lines spread evenly through it."""
    code = heldout_code(config.ppl_chars)
    starts = []
    for line in re.finditer(r"^([ \t]*)\S", code, flags=re.MULTILINE):
        if line.start() >= DEGENERATE_PROMPT_CHARS:
            starts.append(line.end() - 1)
    step = max(len(starts) // DEGENERATE_CODE_PROMPTS, 1)
    cut = [code[max(0, end - DEGENERATE_PROMPT_CHARS) : end] for end in starts[::step]]
    return DEGENERATE_PROMPTS + tuple(cut[:DEGENERATE_CODE_PROMPTS])


@torch.no_grad()
def degenerate_counts(model: torch.nn.Module, tokenizer, prompts: Sequence[str] = DEGENERATE_PROMPTS) -> dict:
    """How many greedy continuations of the fixed prompts are empty, and how many loop.

    One batched generate, left-padded so every prompt ends at the last column."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    rows = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    width = max(map(len, rows))
    input_ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=DEGENERATE_NEW_TOKENS,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    empty = loops = 0
    for row in out[:, width:].tolist():
        new = row[: row.index(eos)] if eos in row else row
        empty += not tokenizer.decode(new).strip()
        loops += is_loop(new)
    return {"empty": empty, "loops": loops, "prompts": len(prompts)}


@dataclass
class GateBaseline:
    """What the candidate is compared against, measured before the update."""

    parent_heldout_logps: torch.Tensor
    base_ppl: float
    base_degenerate: dict
    # The live weights' perplexity windows (measure_parent); None: judged against the base alone.
    parent_windows: WindowLosses | None = None


def measure_base(model: PeftModel, tokenizer, config: GateConfig) -> tuple[float, dict]:
    """The base model's (adapter off) held-out perplexity and degenerate counts: fixed per base
    model, so callers measure them once."""
    with model.disable_adapter():
        ppl = perplexity(model, heldout_ids(tokenizer, config))
        return ppl, degenerate_counts(model, tokenizer, degenerate_prompts(config))


def evaluate_candidate(
    model: PeftModel,
    tokenizer,
    heldout: Sequence[Episode],
    baseline: GateBaseline,
    config: GateConfig,
) -> GateResult:
    figures: dict[str, float] = {"heldout_episodes": float(len(heldout))}
    failures = []

    if heldout:
        live_value, live_ess = snis(baseline.parent_heldout_logps, heldout)
        cand_value, cand_ess = snis(sequence_logps(model, heldout), heldout)
        figures.update(reward_live=live_value, reward_candidate=cand_value, ess=min(live_ess, cand_ess))
        if min(live_ess, cand_ess) >= config.min_ess and cand_value < live_value - config.reward_margin:
            failures.append(
                f"estimated reward {cand_value:+.3f} below live {live_value:+.3f} by more than "
                f"{config.reward_margin}"
            )

    windows = window_losses(model, heldout_ids(tokenizer, config))
    verdict = perplexity_verdict(windows, baseline.parent_windows, baseline.base_ppl, config)
    figures.update(ppl_base=baseline.base_ppl, ppl_candidate=windows.ppl, ppl_rise=verdict.rise_over_base)
    if baseline.parent_windows is not None and verdict.rise_over_parent is not None:
        figures.update(
            ppl_parent=baseline.parent_windows.ppl,
            ppl_rise_parent=verdict.rise_over_parent,
            ppl_rise_parent_lower=verdict.rise_over_parent_lower or 0.0,
        )
    failures += verdict.failures

    degenerate = degenerate_counts(model, tokenizer, degenerate_prompts(config))
    figures.update(degenerate_empty=degenerate["empty"], degenerate_loops=degenerate["loops"])
    failures += degenerate_failures(degenerate, baseline.base_degenerate, config)
    return GateResult(passed=not failures, reason="; ".join(failures), figures=figures)


def degenerate_failures(candidate: dict, base: dict, config: GateConfig) -> list[str]:
    """Why the candidate's greedy continuations fail the degenerate check ([] when they pass)."""
    failures = []
    if candidate["empty"] == candidate["prompts"] and base["empty"] < candidate["prompts"]:
        failures.append("empty output on every prompt")
    allowed = base["loops"] + math.floor(config.max_extra_loop_share * candidate["prompts"] + 1e-9)
    if candidate["loops"] > allowed:
        failures.append(
            f"repetition loops on {candidate['loops']} of {candidate['prompts']} prompts"
            f" (base: {base['loops']})"
        )
    return failures
