"""The bootstrap's training loop: AdamW on a warmup-then-cosine schedule, over a time budget or a
fixed number of steps."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm import tqdm

from trainer.bootstrap.presets import Preset
from trainer.bootstrap.samples import Samples


def lr_at(progress: float, peak: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    """Linear warmup then cosine decay to `floor`·peak, over the fraction of the time budget used."""
    if progress < warmup:
        return peak * progress / warmup
    p = min((progress - warmup) / (1 - warmup), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def schedule_progress(step: int, elapsed_s: float, preset: Preset, budget_s: float) -> float | None:
    """How far through its schedule a run is (0 to 1), or None once it is done: after
    `preset.steps` steps when the preset fixes them, else once the budget is spent and at least
    `preset.min_steps` (and one) were made."""
    if preset.steps:
        return step / preset.steps if step < preset.steps else None
    if elapsed_s >= budget_s and step >= max(preset.min_steps, 1):
        return None
    # Past the budget (only while making up `min_steps`) the schedule stays at its floor.
    return min(elapsed_s / budget_s, 1.0)


def train(
    model: Any, samples: Samples, preset: Preset, budget_s: float, device: torch.device, progress: bool
) -> dict[str, float]:
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=preset.lr,
        betas=(0.9, 0.95),
    )
    start = time.monotonic()
    step = tokens = 0
    losses: list[float] = []
    # The bar counts what ends the run: steps when the preset fixes them, else seconds of budget.
    unit = "steps" if preset.steps else "s"
    bar = tqdm(
        total=preset.steps or budget_s,
        desc="bootstrap",
        disable=not progress,
        mininterval=1.0,
        bar_format=f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{n:.0f}}/{{total:.0f}} {unit} {{postfix}}",
    )
    while (done := schedule_progress(step, time.monotonic() - start, preset, budget_s)) is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(done, preset.lr)
        ids, labels = samples.batch(preset.batch)
        loss = model(input_ids=ids.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += int((labels != -100).sum())
        losses.append(loss.item())
        bar.n = step if preset.steps else min(time.monotonic() - start, bar.total)
        rate = tokens / max(time.monotonic() - start, 1e-9)
        bar.set_postfix_str(f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f} {rate:.0f} tok/s")
    bar.close()
    head, tail = losses[: max(len(losses) // 10, 1)], losses[-max(len(losses) // 10, 1) :]
    return {
        "steps": step,
        "tokens_trained": tokens,
        "train_s": time.monotonic() - start,
        "loss_start": sum(head) / len(head),
        "loss_end": sum(tail) / len(tail),
    }
