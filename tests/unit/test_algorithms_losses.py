"""Unit tests for kuberlhf.algorithms.losses (hand-computed expected values)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kuberlhf.algorithms import entropy_from_logits, kl_loss, ppo_policy_loss, token_logprobs, value_loss

LN = math.log

# ---------------------------------------------------------------- log-probs / entropy


def test_token_logprobs_equals_log_softmax_gather():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen)
    tokens = torch.randint(0, 7, (2, 3), generator=gen)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert_close(token_logprobs(logits, tokens), expected)


def test_token_logprobs_applies_temperature():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=gen)
    tokens = torch.randint(0, 7, (2, 3), generator=gen)
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert_close(token_logprobs(logits, tokens, temperature=0.7), expected)


def test_token_logprobs_returns_float32_for_bf16_and_keeps_gradient():
    logits = torch.randn(1, 2, 5).to(torch.bfloat16).requires_grad_()
    out = token_logprobs(logits, torch.tensor([[0, 4]]), temperature=0.5)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_token_logprobs_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, LN(3.0)]]])
    assert_close(token_logprobs(logits, torch.tensor([[1]])), torch.tensor([[LN(0.75)]]))


def test_entropy_of_uniform_is_log_vocab():
    assert_close(entropy_from_logits(torch.zeros(1, 2, 4)), torch.full((1, 2), 1.386294))


def test_entropy_by_hand_two_outcomes():
    # p = [1/4, 3/4]: H = 0.25 ln 4 + 0.75 ln(4/3) = 0.562335
    logits = torch.tensor([[[0.0, LN(3.0)]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[0.562335]]))


# ---------------------------------------------------------------- PPO policy loss


def _ppo_inputs(ratios: list[float], advantages: list[float]):
    old = torch.zeros(1, len(ratios))
    new = torch.tensor([[LN(r) for r in ratios]], requires_grad=True)
    return new, old, torch.tensor([advantages]), torch.ones(1, len(ratios))


def test_ppo_clips_positive_advantage_above_one_plus_clip_high():
    # A=1, ratio 1.5: max(-1.5, -1.2) = -1.2 (clipped: no gradient)
    new, old, adv, mask = _ppo_inputs([1.5], [1.0])
    loss, stats = ppo_policy_loss(new, old, adv, mask)
    assert_close(loss, torch.tensor(-1.2))
    assert_close(stats["clip_fraction"], torch.tensor(1.0))
    loss.backward()
    assert_close(new.grad, torch.zeros(1, 1))


def test_ppo_clips_negative_advantage_below_one_minus_clip_low():
    # A=-1, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped: no gradient)
    new, old, adv, mask = _ppo_inputs([0.5], [-1.0])
    loss, stats = ppo_policy_loss(new, old, adv, mask)
    assert_close(loss, torch.tensor(0.8))
    assert_close(stats["clip_fraction"], torch.tensor(1.0))
    loss.backward()
    assert_close(new.grad, torch.zeros(1, 1))


def test_ppo_asymmetric_clip_higher():
    # A=1, ratio 1.5, clip_high 0.28: max(-1.5, -1.28) = -1.28
    new, old, adv, mask = _ppo_inputs([1.5], [1.0])
    loss, _ = ppo_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert_close(loss, torch.tensor(-1.28))


def test_ppo_gradient_flows_through_unclipped_token():
    # A=1, ratio 1: loss = -ratio, d loss / d logprob = -ratio = -1
    new, old, adv, mask = _ppo_inputs([1.0], [1.0])
    loss, _ = ppo_policy_loss(new, old, adv, mask)
    loss.backward()
    assert_close(new.grad, torch.tensor([[-1.0]]))


def test_ppo_token_mean_and_clip_fraction_by_hand():
    # tok: (ratio, A) -> per-token loss, clipped active?
    # (1.5,  1) -> max(-1.5, -1.2) = -1.2  yes
    # (0.5, -1) -> max( 0.5,  0.8) =  0.8  yes
    # (1.0,  1) -> max(-1.0, -1.0) = -1.0  no (tie)
    # (1.5, -1) -> max( 1.5,  1.2) =  1.5  no
    # (0.5,  1) -> max(-0.5, -0.8) = -0.5  no
    # mean = -0.4 / 5 = -0.08; clip fraction 2/5; ratio mean 5/5 = 1
    # approx_kl: k3 with log r = -log ratio: 1/ratio - 1 + ln ratio
    #   = [0.072132, 0.306853, 0, 0.072132, 0.306853] -> mean 0.151594
    new, old, adv, mask = _ppo_inputs([1.5, 0.5, 1.0, 1.5, 0.5], [1.0, -1.0, 1.0, -1.0, 1.0])
    loss, stats = ppo_policy_loss(new, old, adv, mask)
    assert_close(loss, torch.tensor(-0.08))
    assert_close(stats["clip_fraction"], torch.tensor(0.4))
    assert_close(stats["ratio_mean"], torch.tensor(1.0))
    assert_close(stats["approx_kl"], torch.tensor(0.151594))
    assert_close(stats["dual_clip_fraction"], torch.tensor(0.0))
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_ppo_dual_clip_bounds_negative_advantage_loss():
    # dual_clip 3:
    # (5, -1) -> max(5, 1.2) = 5 -> min(5, 3) = 3   dual active, clip not active
    # (2, -1) -> max(2, 1.2) = 2 -> min(2, 3) = 2   neither
    # (5,  1) -> max(-5, -1.2) = -1.2 (A > 0: no dual clip)   clip active
    # mean = 3.8 / 3 = 1.266667; dual fraction 1/3; clip fraction 1/3
    new, old, adv, mask = _ppo_inputs([5.0, 2.0, 5.0], [-1.0, -1.0, 1.0])
    loss, stats = ppo_policy_loss(new, old, adv, mask, dual_clip=3.0)
    assert_close(loss, torch.tensor(1.266667))
    assert_close(stats["dual_clip_fraction"], torch.tensor(1.0 / 3.0))
    assert_close(stats["clip_fraction"], torch.tensor(1.0 / 3.0))
    loss.backward()
    # dual-clipped and clipped tokens get no gradient; token 1: d(-A*ratio)/dlogp / 3 = 2/3
    assert_close(new.grad, torch.tensor([[0.0, 2.0 / 3.0, 0.0]]))


@pytest.mark.parametrize("bad", [1.0, 0.5])
def test_ppo_dual_clip_must_exceed_one(bad):
    new, old, adv, mask = _ppo_inputs([1.0], [1.0])
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(new, old, adv, mask, dual_clip=bad)


def test_ppo_padding_invariance_and_finite_gradients():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    old = torch.tensor([[-1.0, -2.0, -1e4]])
    new_a = torch.tensor([[-0.9, -2.3, -3.0]], requires_grad=True)
    new_b = torch.tensor([[-0.9, -2.3, 1e4]], requires_grad=True)  # exp(2e4) would overflow
    loss_a, stats_a = ppo_policy_loss(new_a, old, adv, mask, dual_clip=3.0)
    loss_b, stats_b = ppo_policy_loss(new_b, old, adv, mask, dual_clip=3.0)
    assert_close(loss_a, loss_b)
    for key in stats_a:
        assert_close(stats_a[key], stats_b[key])
    loss_a.backward()
    loss_b.backward()
    assert torch.isfinite(new_b.grad).all()
    assert_close(new_a.grad, new_b.grad)
    assert new_b.grad[0, 2] == 0


# ---------------------------------------------------------------- value loss


def _value_inputs():
    values = torch.tensor([[0.5, 0.1, 0.5]], requires_grad=True)
    old = torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    return values, old, returns, torch.ones(1, 3)


def test_value_loss_clipped_by_hand():
    # clip 0.2, old = 0 so V_clipped = clamp(V, -0.2, 0.2) = [0.2, 0.1, 0.2]
    # tok0: (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.5*0.64 = 0.32   clip active
    # tok1: (0.1-1)^2 = 0.81 both            -> 0.405              not active (tie)
    # tok2: (0.5-0)^2 = 0.25, (0.2-0)^2 = 0.04 -> 0.125            not active
    # mean = 0.85 / 3 = 0.283333
    values, old, returns, mask = _value_inputs()
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    assert_close(loss, torch.tensor(0.283333))
    assert_close(stats["value_clip_fraction"], torch.tensor(1.0 / 3.0))


def test_value_loss_without_clip_is_half_mse():
    # 0.5 * (0.25 + 0.81 + 0.25) / 3 = 0.218333
    values, old, returns, mask = _value_inputs()
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    assert_close(loss, torch.tensor(0.218333))
    assert_close(stats["value_clip_fraction"], torch.tensor(0.0))


def test_value_loss_explained_variance_by_hand():
    # R = [1, 1, 0]: var = 2/9; R - V = [0.5, 0.9, -0.5]: mean 0.3, var (0.04+0.36+0.64)/3 = 0.346667
    # EV = 1 - 0.346667 / 0.222222 = -0.56
    values, old, returns, mask = _value_inputs()
    _, stats = value_loss(values, old, returns, mask)
    assert_close(stats["explained_variance"], torch.tensor(-0.56))


def test_value_loss_explained_variance_is_one_for_perfect_prediction():
    returns = torch.tensor([[1.0, 2.0, 4.0]])
    _, stats = value_loss(returns.clone(), returns.clone(), returns, torch.ones(1, 3))
    assert_close(stats["explained_variance"], torch.tensor(1.0))


def test_value_loss_gradient_flows():
    # unclipped: d/dV 0.5*(V-R)^2 / 3 = (V - R) / 3 = [-0.5, -0.9, 0.5] / 3
    values, old, returns, mask = _value_inputs()
    loss, _ = value_loss(values, old, returns, mask, clip_range=None)
    loss.backward()
    assert_close(values.grad, torch.tensor([[-0.5, -0.9, 0.5]]) / 3.0)


def test_value_loss_padding_invariance():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a = value_loss(torch.tensor([[0.5, 0.1, 0.0]]), torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]]), mask)
    b = value_loss(torch.tensor([[0.5, 0.1, 9e3]]), torch.tensor([[0.0, 0.0, -7.0]]), torch.tensor([[1.0, 1.0, 3e3]]), mask)
    assert_close(a[0], b[0])
    for key in a[1]:
        assert_close(a[1][key], b[1][key])


# ---------------------------------------------------------------- KL loss


def test_kl_loss_k3_masked_mean_by_hand():
    # log r = ref - logprobs = [-1, 1, pad]: k3 = [0.367879, 0.718282] -> mean 0.543081
    logprobs = torch.tensor([[-1.0, -2.0, 50.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = kl_loss(logprobs, ref, mask)
    assert_close(loss, torch.tensor(0.543081))
    loss.backward()
    # d k3 / d logprob = 1 - exp(log r): [1 - e^-1, 1 - e] / 2 = [0.316060, -0.859141], pad 0
    assert_close(logprobs.grad, torch.tensor([[0.316060, -0.859141, 0.0]]))


def test_kl_loss_k1_by_hand():
    # k1 = logprobs - ref = [1, -1] -> mean 0
    loss = kl_loss(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]]), torch.ones(1, 2), estimator="k1")
    assert_close(loss, torch.tensor(0.0))


def test_truncated_importance_weights_by_hand():
    from kuberlhf.algorithms import truncated_importance_weights

    trainer = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    rollout = torch.log(torch.tensor([[0.25, 0.4, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # ratios 2.0, 0.5, (padding) -> capped at 1.5: [1.5, 0.5, 0]
    torch.testing.assert_close(truncated_importance_weights(trainer, rollout, mask, cap=1.5),
                               torch.tensor([[1.5, 0.5, 0.0]]))


def test_token_weights_scale_each_tokens_policy_loss():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, _ = ppo_policy_loss(logprobs, logprobs.detach(), advantages, mask, token_weights=torch.tensor([[2.0, 0.0]]))
    # ratio 1: per-token loss -A = -1, weighted [-2, 0], token mean -1
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, 0.0]]))
