"""How well a base model completes held-out Python: next-token accuracy and exact next-line match.

The next-line test asks what the editor asks: the fill-in-the-middle prompt with the text before a
line as prefix and the text after it as suffix (built by `core.prompts.build_prompt_ids`, as the
backend builds it), greedy-decoded until a newline or end-of-text.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch
from rapidfuzz.distance import Levenshtein

from core.prompts import build_prompt_ids, detect_fim_format


@torch.no_grad()
def token_accuracy(
    model: Any, tokenizer: Any, texts: list[str], seq_len: int, max_tokens: int = 50_000
) -> dict[str, float]:
    """Teacher-forced argmax accuracy and mean loss over the first `max_tokens` held-out tokens."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += [*tokenizer.encode(text, add_special_tokens=False), eos]
        if len(ids) > max_tokens:
            break
    ids = ids[: max_tokens + 1]
    device = next(model.parameters()).device
    correct = total = 0
    loss_sum = 0.0
    for start in range(0, len(ids) - 1, seq_len):
        window = torch.tensor(ids[start : start + seq_len + 1], device=device)
        if len(window) < 2:
            break
        logits = model(input_ids=window[None, :-1]).logits[0].float()
        targets = window[1:]
        correct += int((logits.argmax(-1) == targets).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        total += len(targets)
    return {
        "token_accuracy": correct / max(total, 1),
        "token_loss": loss_sum / max(total, 1) if total else math.nan,
        "tokens": total,
    }


def sample_lines(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prefix, line, suffix) at `n` non-blank lines drawn evenly from all held-out lines."""
    spots = []
    for ti, text in enumerate(texts):
        lines = text.splitlines(keepends=True)
        spots += [(ti, li) for li, line in enumerate(lines) if line.strip()]
    rng = random.Random(seed)
    picked = sorted(rng.sample(spots, min(n, len(spots))))
    cases = []
    cache: tuple[int, list[str]] = (-1, [])
    for ti, li in picked:
        if cache[0] != ti:
            cache = (ti, texts[ti].splitlines(keepends=True))
        lines = cache[1]
        line = lines[li].rstrip("\r\n")
        # The suffix starts with the line's own newline, as the editor shows it on a line being typed.
        cases.append(("".join(lines[:li]), line, lines[li][len(line) :] + "".join(lines[li + 1 :])))
    return cases


@torch.no_grad()
def greedy_line(model: Any, prompt_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with the KV cache, stopping at end-of-text or any token holding a newline."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        if token in stop_ids:
            break
        next_ids = torch.tensor([[token]], device=device)
        out = model(input_ids=next_ids, cache=out.cache, use_cache=True)
    return generated


def newline_token_ids(tokenizer: Any) -> set[int]:
    ids = set()
    for token_id in range(len(tokenizer)):
        if "\n" in tokenizer.decode([token_id]):
            ids.add(token_id)
    return ids


def next_line_match(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    n_samples: int = 300,
    budget_tokens: int = 384,
    max_new_tokens: int = 48,
    seed: int = 0,
    time_limit_s: float | None = None,
) -> dict[str, float]:
    """Share of held-out lines the model writes exactly (trailing whitespace ignored), and the mean
    normalized edit similarity of its lines, which moves before exact matches do.

    Past `time_limit_s` it stops early and reports the lines it did (the sample order is random).
    """
    fmt = detect_fim_format(tokenizer)
    stop_ids = newline_token_ids(tokenizer) | {tokenizer.eos_token_id}
    exact = 0
    similarity = 0.0
    cases = sample_lines(texts, n_samples, seed)
    random.Random(seed).shuffle(cases)
    deadline = time.monotonic() + time_limit_s if time_limit_s else math.inf
    n = 0
    for prefix, line, suffix in cases:
        if time.monotonic() > deadline:
            break
        target = line.rstrip()
        prompt = build_prompt_ids(tokenizer, fmt, prefix, suffix, budget_tokens)
        # Tokens past the true line's length plus a margin cannot turn a miss into a match, and an
        # untrained model would otherwise run every line to the cap.
        cap = min(max_new_tokens, len(tokenizer.encode(target, add_special_tokens=False)) + 8)
        generated = greedy_line(model, prompt, stop_ids, cap)
        text = tokenizer.decode(generated, skip_special_tokens=True).split("\n")[0].rstrip()
        exact += text == target
        similarity += Levenshtein.normalized_similarity(text, target)
        n += 1
    return {
        "next_line_exact": exact / n if n else 0.0,
        "next_line_similarity": similarity / n if n else 0.0,
        "next_line_samples": n,
    }


def evaluate(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    seq_len: int,
    n_lines: int = 300,
    max_tokens: int = 50_000,
    budget_tokens: int = 384,
    seed: int = 0,
    time_limit_s: float | None = None,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        figures = token_accuracy(model, tokenizer, texts, seq_len, max_tokens)
        figures |= next_line_match(
            model, tokenizer, texts, n_lines, budget_tokens, seed=seed, time_limit_s=time_limit_s
        )
    finally:
        model.train(was_training)
    return figures
