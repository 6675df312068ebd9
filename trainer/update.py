"""One policy update: minibatched AdamW epochs over a cycle's episodes with the PG objective."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import Tensor

from core.wire import Episode
from trainer.distributed import ALONE, World
from trainer.logprobs import CompletionBatch, collate, completion_logprobs, pad_rows
from trainer.objectives.pg import PGConfig, compute_advantages, pg_loss
from trainer.progress import Progress
from trainer.replay import ReplayText, replay_terms


def episode_batch(episodes: Sequence[Episode], device: torch.device) -> CompletionBatch:
    return collate(
        [e.prompt_ids for e in episodes],
        [e.completion_ids for e in episodes],
        [e.temperature for e in episodes],
    ).to(device)


@torch.no_grad()
def reference_logprobs(model: PeftModel, episodes: Sequence[Episode], batch_size: int) -> list[Tensor]:
    """Per-episode log-probs under the base model: the same weights with the adapter switched off."""
    device = next(model.parameters()).device
    out: list[Tensor] = []
    with model.disable_adapter():
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start : start + batch_size]
            batch = episode_batch(chunk, device)
            logps = completion_logprobs(model, batch).cpu()
            out.extend(logps[i, : len(e.completion_ids)] for i, e in enumerate(chunk))
    return out


@torch.no_grad()
def kl_to_base(
    model: PeftModel, episodes: Sequence[Episode], batch_size: int, ref: Sequence[Tensor] | None = None
) -> float:
    """Mean per-token k3 estimate of KL(policy ‖ base) on the episodes' completion tokens."""
    ref = ref if ref is not None else reference_logprobs(model, episodes, batch_size)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(episodes), batch_size):
        chunk = episodes[start : start + batch_size]
        batch = episode_batch(chunk, device)
        logps = completion_logprobs(model, batch)
        diff = pad_rows(ref[start : start + batch_size], logps.shape[1]).to(device) - logps
        k3 = (torch.exp(diff) - diff - 1) * batch.completion_mask
        total += float(k3.sum())
        tokens += int(batch.completion_mask.sum())
    return total / max(tokens, 1)


def train_on_episodes(
    model: PeftModel,
    episodes: Sequence[Episode],
    config: PGConfig,
    *,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    parent_version: str | None = None,
    kl_budget: float | None = None,
    measure_kl_after: bool = True,
    wanted: Sequence[list[int] | None] | None = None,
    replay: ReplayText | None = None,
    world: World = ALONE,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Updates the adapter in place; returns the update's figures (step means, KL after).
    `progress` advances by one each step (at most epochs × minibatches; fewer if the KL budget stops it).

    `wanted[i]`: the tokens the user wanted instead of episode i's completion (trainer/corrections.py),
    imitated with weight `config.correction_coef`; None where there are none. `replay`: general code
    whose next-token loss is added with weight `config.replay_coef`, and its KL to the base model
    with `config.replay_kl_coef` (figures `replay_nll`, `replay_kl`), `config.replay_windows` windows
    a step.

    `kl_budget` bounds how far this update may move the policy from `parent_version`, the version
    it started from: before each step, KL(parent ‖ current) per token is estimated on the
    minibatch's episodes that the parent served (their recorded log-probs are the parent's), and
    once it exceeds the budget the update stops there (`kl_stopped` = 1).

    `world`: the ranks of a data-parallel update (trainer/distributed.py), every one calling this
    with the same arguments; each computes its share of every minibatch and the gradients are summed.
    The figures returned are the whole minibatches' (the share-weighted sum of the ranks').
    """
    if not episodes:
        raise ValueError("no episodes to train on")
    wanted = list(wanted) if wanted is not None else [None] * len(episodes)
    if len(wanted) != len(episodes):
        raise ValueError("wanted and episodes differ in length")
    device = next(model.parameters()).device
    # The baseline spans every episode of the update, so all minibatches share it.
    advantages = compute_advantages(torch.tensor([e.reward for e in episodes]), config)
    generator = torch.Generator().manual_seed(seed)
    ref, kl_weight = kl_reference(model, episodes, config.kl_sample, batch_size, generator, world)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or make_optimizer(model, learning_rate)

    sums: dict[str, float] = defaultdict(float)
    steps, kl_parent_max, kl_stopped = 0, 0.0, False
    nlls: dict[str, list[float]] = {"correction_nll": [], "replay_nll": [], "replay_kl": []}
    for _ in range(epochs):
        # Every rank draws the same order (same generator, same seed): the minibatches agree.
        order = torch.randperm(len(episodes), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            mine = world.share(idx)
            # This rank's share of the minibatch's mean: the ranks' weighted losses sum to it.
            weight = len(mine) / len(idx)
            part = pg_part(model, episodes, mine, ref, kl_weight, advantages, parent_version, config, device)
            kl_sum, kl_tokens = world.sum([part.kl_parent_sum, part.kl_parent_tokens])
            if kl_tokens:
                kl_parent = kl_sum / kl_tokens
                kl_parent_max = max(kl_parent_max, kl_parent)
                if kl_budget is not None and kl_parent > kl_budget:
                    kl_stopped = True
                    break
            loss = part.loss * weight if part.loss is not None else None
            extra: dict[str, float] = {}
            if config.correction_coef > 0 and any(wanted[i] for i in idx):
                nll = correction_part(model, episodes, wanted, [i for i in mine if wanted[i]], device, world)
                loss = add(loss, config.correction_coef * nll)
                extra["correction_nll"] = float(nll.detach())
            if replay is not None and (config.replay_coef > 0 or config.replay_kl_coef > 0):
                windows = replay.sample(config.replay_windows, generator)
                own = windows[world.rank :: world.size]
                with_kl = config.replay_kl_coef > 0
                if len(own):
                    share = len(own) / len(windows)
                    nll, kl = replay_terms(model, own.to(device), with_kl)
                    nll = nll * share
                    loss = add(loss, config.replay_coef * nll)
                    extra["replay_nll"] = float(nll.detach())
                    if kl is not None:
                        loss = add(loss, config.replay_kl_coef * kl * share)
                        extra["replay_kl"] = float(kl.detach()) * share
                else:
                    extra["replay_nll"] = 0.0
                    if with_kl:
                        extra["replay_kl"] = 0.0
            optimizer.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
            world.sum_gradients(params)
            stats = step_figures(part.stats, weight, extra, world)
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
            optimizer.step()
            for key in list(nlls):
                if key in stats:
                    nlls[key].append(stats.pop(key))
            for key, value in stats.items():
                sums[key] += value
            steps += 1
            if progress is not None:
                progress.advance()
        if kl_stopped:
            break

    metrics = {key: value / max(steps, 1) for key, value in sums.items()}
    metrics["steps"] = float(steps)
    metrics["tokens"] = float(sum(len(e.completion_ids) for e in episodes))
    metrics["mean_reward"] = float(torch.tensor([e.reward for e in episodes]).mean())
    metrics["kl_parent_max"] = kl_parent_max
    metrics["corrections"] = float(sum(w is not None for w in wanted))
    metrics.update({key: sum(values) / len(values) for key, values in nlls.items() if values})
    metrics["kl_stopped"] = float(kl_stopped)
    if measure_kl_after:
        full = ref if all(r is not None for r in ref) else None
        metrics["kl_after"] = kl_to_base(model, episodes, batch_size, full)  # type: ignore[arg-type]
    return metrics


def kl_reference(
    model: PeftModel,
    episodes: Sequence[Episode],
    share: float,
    batch_size: int,
    generator: torch.Generator,
    world: World = ALONE,
) -> tuple[list[Tensor | None], Tensor]:
    """The KL penalty's reference: the base log-probs of a random `share` of the episodes (at least
    one), and each episode's weight, 1 / share for the sampled ones (an unbiased estimate of the full
    penalty) and 0 for the rest. Across ranks each computes its share of them and all gather."""
    with_ref = (torch.rand(len(episodes), generator=generator) < share).tolist()
    if not any(with_ref):
        with_ref[0] = True
    sampled = [i for i, chosen in enumerate(with_ref) if chosen]
    mine = world.share(sampled)
    computed = reference_logprobs(model, [episodes[i] for i in mine], batch_size)
    ref: list[Tensor | None] = [None] * len(episodes)
    for i, logps in world.gather(list(zip(mine, computed, strict=True))):
        ref[i] = logps
    weight = torch.tensor([len(episodes) / len(sampled) if chosen else 0.0 for chosen in with_ref])
    return ref, weight


def wanted_logprobs(
    model: PeftModel,
    episodes: Sequence[Episode],
    wanted: Sequence[list[int] | None],
    rows: Sequence[int],
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """([B, U] log-probs at temperature 1, mask) of the wanted tokens of episodes `rows`."""
    batch = collate(
        [episodes[i].prompt_ids for i in rows], [wanted[i] or [] for i in rows], [1.0] * len(rows)
    ).to(device)
    return completion_logprobs(model, batch), batch.completion_mask


# pg_loss's figures, in the order the ranks sum them.
PG_FIGURES = ("loss", "pg_loss", "kl", "ratio_mean", "clip_frac")


@dataclass
class PGPart:
    """One rank's share of a minibatch: its PG loss (a mean over its rows; None without rows), its
    figures, and the sums behind KL(parent ‖ current) on its tokens the parent served."""

    loss: Tensor | None
    stats: dict[str, float]
    kl_parent_sum: float
    kl_parent_tokens: int


def pg_part(
    model: PeftModel,
    episodes: Sequence[Episode],
    rows: Sequence[int],
    ref: Sequence[Tensor | None],
    kl_weight: Tensor,
    advantages: Tensor,
    parent_version: str | None,
    config: PGConfig,
    device: torch.device,
) -> PGPart:
    if not rows:
        return PGPart(None, dict.fromkeys(PG_FIGURES, 0.0), 0.0, 0)
    chunk = [episodes[i] for i in rows]
    batch = episode_batch(chunk, device)
    width = batch.completion_ids.shape[1]
    behaviour = pad_rows([e.token_logprobs for e in chunk], width).to(device)
    logps = completion_logprobs(model, batch)
    # Rows without a reference get their own log-probs: a zero penalty, weighted 0 anyway.
    own = logps.detach().cpu()
    ref_logps = pad_rows([ref[i] if ref[i] is not None else own[r] for r, i in enumerate(rows)], width)
    on_parent = torch.tensor([e.model_version == parent_version for e in chunk], device=device)
    kl_sum, kl_tokens = parent_kl_sums(logps.detach(), behaviour, batch.completion_mask & on_parent[:, None])
    loss, stats = pg_loss(
        logps,
        behaviour,
        ref_logps.to(device),
        advantages[list(rows)].to(device),
        batch.completion_mask,
        config,
        kl_weight[list(rows)].to(device),
    )
    return PGPart(loss, stats, kl_sum, kl_tokens)


def correction_part(
    model: PeftModel,
    episodes: Sequence[Episode],
    wanted: Sequence[list[int] | None],
    rows: Sequence[int],
    device: torch.device,
    world: World,
) -> Tensor:
    """This rank's part of the correction NLL: its rows' summed NLL over the wanted tokens of the
    minibatch's corrected rows on all ranks (correction_loss's mean, split across them)."""
    if not rows:
        world.sum([0.0])
        return torch.zeros((), device=device)
    logps, mask = wanted_logprobs(model, episodes, wanted, rows, device)
    mask = mask.to(logps.dtype)
    [tokens] = world.sum([float(mask.sum())])
    return -(logps * mask).sum() / max(tokens, 1.0)


def add(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def step_figures(
    pg: dict[str, float], weight: float, nlls: dict[str, float], world: World
) -> dict[str, float]:
    """A step's figures over the whole minibatch: the PG figures weighted by each rank's share (exact
    for the losses, token-weighted figures approximately), the NLL parts summed."""
    keys = [*PG_FIGURES, *nlls]
    summed = world.sum([pg[k] * weight for k in PG_FIGURES] + list(nlls.values()))
    return dict(zip(keys, summed, strict=True))


def make_optimizer(model: PeftModel, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)


def parent_kl_sums(logps: Tensor, parent_logps: Tensor, mask: Tensor) -> tuple[float, int]:
    """The sum and count behind the per-token k3 estimate of KL(parent ‖ current) on tokens the
    parent sampled: with r = p_current / p_parent, E_parent[r − 1 − log r] = KL(parent ‖ current).
    Sums, so that ranks can add theirs before dividing."""
    n = int(mask.sum())
    if n == 0:
        return 0.0, 0
    log_r = (logps - parent_logps).clamp(-20.0, 20.0)
    k3 = torch.exp(log_r) - 1 - log_r
    return float((k3 * mask).sum()), n
