"""The PG objective on hand-made tensors: clipping, gradient sign, baseline, KL."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.objectives.pg import PGConfig, compute_advantages, pg_loss


def grad_of(
    logp: float,
    behaviour: float,
    advantage: float,
    ref: float | None = None,
    config: PGConfig | None = None,
) -> tuple[float, dict[str, float]]:
    """d loss / d logp for a single token of a single episode."""
    logps = torch.tensor([[logp]], requires_grad=True)
    ref_t = torch.tensor([[logp if ref is None else ref]])
    loss, stats = pg_loss(
        logps,
        torch.tensor([[behaviour]]),
        ref_t,
        torch.tensor([advantage]),
        torch.ones(1, 1, dtype=torch.bool),
        config or PGConfig(kl_coef=0.0),
    )
    loss.backward()
    assert logps.grad is not None
    return float(logps.grad), stats


def test_on_policy_gradient_is_minus_advantage() -> None:
    # ratio = 1: d(−ratio·A)/dlogp = −A, so gradient descent raises logp when A > 0.
    g, stats = grad_of(-1.0, -1.0, advantage=2.0)
    assert g == pytest.approx(-2.0)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["clip_frac"] == 0.0
    g, _ = grad_of(-1.0, -1.0, advantage=-0.5)
    assert g == pytest.approx(0.5)


def test_zero_advantage_gives_zero_pg_gradient() -> None:
    for behaviour in (-3.0, -1.0, -0.2):
        g, _ = grad_of(-1.0, behaviour, advantage=0.0, ref=-1.0, config=PGConfig(kl_coef=0.1))
        assert g == 0.0


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "clipped"),
    [
        (math.log(1.5), 1.0, True),  # already pushed up past 1 + ε: no more push
        (math.log(0.5), 1.0, False),  # below 1 − ε with A > 0: still pushed up
        (math.log(0.5), -1.0, True),  # already pushed down past 1 − ε: no more push
        (math.log(1.5), -1.0, False),  # above 1 + ε with A < 0: still pushed down
        (math.log(5.0), -1.0, True),  # above the ratio cap with A < 0: dual clip stops it
        (math.log(1.1), 1.0, False),  # inside the trust region
    ],
)
def test_clipping(log_ratio: float, advantage: float, clipped: bool) -> None:
    config = PGConfig(clip_eps=0.2, ratio_cap=3.0, kl_coef=0.0)
    g, stats = grad_of(-1.0 + log_ratio, -1.0, advantage, config=config)
    if clipped:
        assert g == 0.0
        assert stats["clip_frac"] == 1.0
    else:
        ratio = math.exp(log_ratio)
        assert g == pytest.approx(-ratio * advantage)
        assert stats["clip_frac"] == 0.0


def test_runaway_ratio_stays_finite() -> None:
    g, stats = grad_of(0.0, -200.0, advantage=-1.0)
    assert math.isfinite(g) and math.isfinite(stats["loss"])
    assert g == 0.0


def test_kl_is_zero_when_policy_equals_reference() -> None:
    logps = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    loss, stats = pg_loss(
        logps, logps.detach(), logps.detach(), torch.zeros(1), torch.ones(1, 3, dtype=torch.bool), PGConfig()
    )
    loss.backward()
    assert stats["kl"] == 0.0
    assert torch.all(logps.grad == 0)


def test_kl_penalty_pulls_toward_reference() -> None:
    # Policy above the reference on this token: the penalty's gradient lowers logp, and kl > 0.
    g, stats = grad_of(-1.0, -1.0, advantage=0.0, ref=-2.0, config=PGConfig(kl_coef=1.0))
    assert stats["kl"] == pytest.approx(math.exp(-1.0) + 1.0 - 1.0)
    assert g > 0
    g, _ = grad_of(-2.0, -2.0, advantage=0.0, ref=-1.0, config=PGConfig(kl_coef=1.0))
    assert g < 0


def test_padding_is_ignored_and_tokens_sum_within_an_episode() -> None:
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -1.0])
    base = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    junk = torch.tensor([[-1.0, -1.0, -9.0], [-1.0, -7.0, -3.0]])
    config = PGConfig(kl_coef=0.0)
    loss_a, _ = pg_loss(base, base, base, adv, mask, config)
    loss_b, _ = pg_loss(junk, base, junk, adv, mask, config)
    assert float(loss_a) == pytest.approx(float(loss_b))
    # On-policy the surrogate is A per token: episode 1 has 2 tokens (−2), episode 2 one (+1).
    assert float(loss_a) == pytest.approx((-2.0 + 1.0) / 2)


def test_advantages() -> None:
    rewards = torch.tensor([0.75, -0.25, 0.0, -0.25])
    adv = compute_advantages(rewards, PGConfig(baseline="mean"))
    assert float(adv.sum()) == pytest.approx(0.0, abs=1e-6)
    assert float(adv[0]) == pytest.approx(0.75 - 0.0625)
    assert torch.equal(compute_advantages(rewards, PGConfig(baseline="none")), rewards)
    with pytest.raises(ValueError):
        compute_advantages(rewards, PGConfig(baseline="median"))  # type: ignore[arg-type]
