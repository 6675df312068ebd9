"""The default objective: clipped, importance-weighted policy gradient with a KL penalty to the base.

Per completion token t of episode i, with A_i the episode's advantage:

    ratio_t = exp(logp_t − behaviour_logp_t)            importance weight (serving → current policy)
    surr_t  = min(ratio_t · A_i, clip(ratio_t, 1 − ε, 1 + ε) · A_i)          PPO clipped surrogate
    surr_t  = max(surr_t, c · A_i)   where A_i < 0                   dual clip: the ratio cap c
    k3_t    = exp(ref_t − logp_t) − (ref_t − logp_t) − 1            KL(policy ‖ base), k3 estimator
    loss    = mean_i  Σ_t ( −surr_t + β · k3_t )  +  λ · mean_(j,u) −log π(w_ju | prompt_j, w_j<u)
                                                  +  γ · mean_(k,v) −log π(g_kv | g_k<v)
                                                  +  δ · mean_(k,v) KL(base ‖ π)(· | g_k<v)

The last term imitates corrections: w_j is what the user wanted where episode j's suggestion was
(what they wrote instead after rejecting it, or the edited text that survived an acceptance; see
trainer/corrections.py), averaged over its tokens u. The policy gradient alone learns only from
what the policy sampled, and a weak policy rarely samples what the user meant; the user's own text
at that spot says it outright, for every rejection.

The γ term is PPO-ptx's pretraining mix: next-token loss on windows g_k of general code
(trainer/replay.py), so that learning one team's text does not cost the rest of what the model knows.
Beside it, δ · mean_(k,v) KL(base(·|g_k<v) ‖ π(·|g_k<v)) on the same windows holds general code to
the base model, not to the data: a trust region that does not move with each cycle's parent.

The reference log-probs `ref` come from the same peft model with its adapter switched off (the base
model), so no second model sits in memory. Tokens are summed within an episode because the reward
belongs to the whole completion: Σ_t ∇logp_t · A is the policy gradient of the sequence, and an
abstention (a lone end-of-sequence token) is one action like any other. Episodes are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# exp() of a log-ratio beyond this overflows float32 long before clipping could act on it.
_MAX_LOG_RATIO = 20.0


@dataclass
class PGConfig:
    # PPO trust region on the importance ratio.
    clip_eps: float = 0.2
    # β: weight of the KL penalty to the base model.
    kl_coef: float = 0.05
    # Dual clip (Ye et al. 2020): for A < 0 the surrogate is floored at ratio_cap · A, so stale
    # episodes whose ratio has run far above 1 stop pushing instead of pushing without bound.
    ratio_cap: float = 3.0
    # "mean": A = r − mean(r) over the episodes of the update (the whole cycle, not one minibatch,
    # so every minibatch sees the same baseline); "none": A = r.
    baseline: Literal["mean", "none"] = "mean"
    # Share of an update's episodes whose base-model log-probs are computed for the KL penalty; the
    # penalty of each sampled one is weighted 1 / kl_sample, an unbiased estimate of the full
    # penalty for a fraction of the cost of the reference forward pass (the update's largest extra).
    kl_sample: float = 0.25
    # λ: weight of the correction term (0 switches it off), and the most tokens imitated per episode.
    correction_coef: float = 1.0
    correction_max_tokens: int = 64
    # γ: weight of the replay term (0 switches it off); windows of general code per step, their length.
    replay_coef: float = 1.0
    replay_windows: int = 4
    replay_window_tokens: int = 256
    # δ: weight of KL(base ‖ policy) per token on the same windows (0 switches it off), a trust
    # region to the base on general code. Both replay terms are per-token means over
    # replay_windows × replay_window_tokens (1,024) tokens, the correction term over a minibatch's
    # wanted tokens (about 8 × 8-64): at δ = 1 a replay token would weigh 15-25 times less than a
    # corrected one. 16 makes them about even.
    replay_kl_coef: float = 16.0


def compute_advantages(rewards: Tensor, config: PGConfig) -> Tensor:
    """One advantage per episode, from the rewards of all episodes trained on together."""
    rewards = rewards.float()
    if config.baseline == "mean":
        return rewards - rewards.mean()
    if config.baseline == "none":
        return rewards
    raise ValueError(f"unknown baseline {config.baseline!r}")


def pg_loss(
    logps: Tensor,
    behaviour_logps: Tensor,
    ref_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: PGConfig,
    kl_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Loss and stats for one minibatch.

    logps, behaviour_logps, ref_logps, mask: [B, T] per completion token (mask False on padding);
    advantages: [B]; kl_weight: [B] weight of each row's KL penalty (None: 1; 0 where no reference
    was computed). Only `logps` carries gradient.
    """
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)[:, None]
    log_ratio = (logps - behaviour_logps).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - config.clip_eps, 1 + config.clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    surrogate = torch.where(adv < 0, torch.maximum(surrogate, config.ratio_cap * adv), surrogate)

    ref_minus_new = ref_logps - logps
    k3 = torch.exp(ref_minus_new) - ref_minus_new - 1

    weight = torch.ones_like(adv) if kl_weight is None else kl_weight.to(logps.dtype)[:, None]
    per_token = -surrogate + config.kl_coef * weight * k3
    n_seqs = logps.shape[0]
    loss = (per_token * mask).sum() / n_seqs

    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1)
        # Tokens whose gradient the clip (or the cap) switched off.
        was_clipped = (
            ((ratio > 1 + config.clip_eps) & (adv > 0))
            | ((ratio < 1 - config.clip_eps) & (adv < 0))
            | ((ratio > config.ratio_cap) & (adv < 0))
        )
        stats = {
            "loss": float(loss),
            "pg_loss": float((-surrogate * mask).sum() / n_seqs),
            # Measured on the rows with a reference only.
            "kl": float((k3 * mask * (weight > 0)).sum() / (mask * (weight > 0)).sum().clamp(min=1)),
            "ratio_mean": float((ratio * mask).sum() / n_tokens),
            "clip_frac": float((was_clipped.to(mask.dtype) * mask).sum() / n_tokens),
        }
    return loss, stats


def correction_loss(logps: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood of the wanted tokens; logps, mask: [B, U] at temperature 1."""
    mask = mask.to(logps.dtype)
    return -(logps * mask).sum() / mask.sum().clamp(min=1)
