"""GSPO, CISPO and DAPO's shaping against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kuberlhf.algorithms import (
    POLICY_LOSSES,
    cispo_policy_loss,
    groups_with_signal,
    gspo_policy_loss,
    overlong_penalty,
    ppo_policy_loss,
)

# two sequences: the first has 2 real tokens, the second 1 (then padding)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
OLD = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])


def test_gspo_takes_the_geometric_mean_ratio_of_each_sequence_and_averages_over_sequences():
    # sequence 1: log ratios 0.2 and -0.1 -> s = exp(0.05); sequence 2: log ratio 0.1 -> s = exp(0.1)
    new = torch.tensor([[-0.8, -1.1], [-1.9, 5.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    loss, stats = gspo_policy_loss(new, OLD, advantages, MASK, clip_low=0.5, clip_high=0.5)
    s1, s2 = math.exp(0.05), math.exp(0.1)
    # unclipped (range 0.5 is wide): L = mean(-A_i s_i) = (-1 * s1 + 2 * s2) / 2
    assert loss.item() == pytest.approx((-s1 + 2 * s2) / 2, rel=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx((s1 + s2) / 2, rel=1e-6)
    assert stats["clip_fraction"].item() == 0.0
    loss.backward()
    # d/dlogp of -A_i s_i / B: -A_i s_i / (B |y_i|) for each real token, 0 at padding
    expected = torch.tensor([[-s1 / 4, -s1 / 4], [2 * s2 / 2, 0.0]])
    assert_close(new.grad, expected)


def test_gspo_clips_the_sequence_ratio_and_cuts_its_gradient():
    new = torch.tensor([[-0.8, -1.1], [-1.9, 0.0]], requires_grad=True)  # s1 = exp(0.05) ~ 1.051, s2 ~ 1.105
    advantages = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    loss, stats = gspo_policy_loss(new, OLD, advantages, MASK, clip_low=3e-4, clip_high=4e-4)
    assert loss.item() == pytest.approx(-(1 + 4e-4), rel=1e-6)  # both positive-advantage ratios clipped above
    assert stats["clip_fraction"].item() == 1.0
    loss.backward()
    assert new.grad.abs().sum().item() == 0.0


def test_gspo_at_ratio_one_is_the_sequence_mean_policy_gradient():
    logprobs = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]], requires_grad=True)
    advantages = torch.tensor([[0.5, 0.5], [-1.5, -1.5]])
    loss, _ = gspo_policy_loss(logprobs, logprobs.detach(), advantages, MASK)
    assert loss.item() == pytest.approx((-0.5 + 1.5) / 2)
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[-0.125, -0.125], [0.75, 0.0]]))


def test_gspo_refuses_the_dual_clip():
    with pytest.raises(ValueError, match="dual_clip"):
        gspo_policy_loss(OLD, OLD, MASK, MASK, dual_clip=3.0)


def test_cispo_weights_each_tokens_log_prob_by_its_capped_detached_ratio():
    # log ratios: 0.2, -0.1 | ln 6 (ratio 6, capped at 1 + 4 = 5)
    new = torch.tensor([[-0.8, -1.1], [-2.0 + math.log(6.0), 3.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    loss, stats = cispo_policy_loss(new, OLD, advantages, MASK)
    r1, r2, cap = math.exp(0.2), math.exp(-0.1), 5.0
    logp = [-0.8, -1.1, -2.0 + math.log(6.0)]
    expected = -(r1 * 1 * logp[0] + r2 * 1 * logp[1] + cap * -1 * logp[2]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((r1 + r2 + 6.0) / 3, rel=1e-6)
    loss.backward()
    # every token keeps a gradient, -w_t A_t / T (PPO would give the capped token none)
    assert_close(new.grad, torch.tensor([[-r1 / 3, -r2 / 3], [cap / 3, 0.0]]))


def test_cispo_lower_bound_is_off_by_default_and_applies_when_given():
    new = torch.tensor([[-1.0 + math.log(0.5), -1.0], [-2.0, 0.0]])  # first ratio 0.5
    advantages = torch.ones(2, 2)
    _, unbounded = cispo_policy_loss(new, OLD, advantages, MASK)
    loss, bounded = cispo_policy_loss(new, OLD, advantages, MASK, clip_low=0.2)
    assert unbounded["clip_fraction"].item() == 0.0
    assert bounded["clip_fraction"].item() == pytest.approx(1 / 3)
    assert loss.item() == pytest.approx(-(0.8 * new[0, 0].item() + 1 * -1.0 + 1 * -2.0) / 3, rel=1e-6)


def test_cispo_and_ppo_have_the_same_gradient_at_ratio_one():
    logprobs = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]], requires_grad=True)
    advantages = torch.tensor([[0.3, 0.3], [-0.7, -0.7]])
    cispo, _ = cispo_policy_loss(logprobs, logprobs.detach(), advantages, MASK)
    (grad_cispo,) = torch.autograd.grad(cispo, logprobs)
    ppo, _ = ppo_policy_loss(logprobs, logprobs.detach(), advantages, MASK)
    (grad_ppo,) = torch.autograd.grad(ppo, logprobs)
    assert_close(grad_cispo, grad_ppo)


def test_every_policy_loss_reports_the_same_statistics():
    logprobs = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]])
    keys = {name: set(entry.function(logprobs, OLD, torch.ones(2, 2), MASK)[1]) for name, entry in POLICY_LOSSES.items()}
    assert all(found == keys["ppo"] for found in keys.values()), keys
    assert {name: entry.unit for name, entry in POLICY_LOSSES.items()} == {"ppo": "token", "gspo": "sequence",
                                                                          "cispo": "token"}


def test_overlong_penalty_is_dapo_equation_13():
    lengths = torch.tensor([10, 16, 18, 20, 21])
    # L_max 20, L_cache 4: no penalty up to 16, then (16 - |y|) / 4, -1 past the limit
    assert overlong_penalty(lengths, 20, 4).tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(lengths, 20, 4, penalty=0.5).tolist() == [0.0, 0.0, -0.25, -0.5, -0.5]
    assert overlong_penalty(lengths, 20, 0).tolist() == [0.0, 0.0, 0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 20, 21)


def test_groups_with_signal_keeps_groups_whose_rewards_differ():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert groups_with_signal(scores, 2).tolist() == [False, False, True, True, False, False]
    with pytest.raises(ValueError, match="group_size"):
        groups_with_signal(scores, 4)


def test_pick_groups_takes_groups_with_signal_first_then_fills_with_uniform_ones():
    from kuberlhf.algorithms import pick_groups

    # groups of 2: [1,1] uniform, [0,1] signal, [0,0] uniform, [1,0] signal
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert pick_groups(scores, 2, 2) == [2, 3, 6, 7]  # both signal groups, in sampled order
    assert pick_groups(scores, 2, 3) == [0, 1, 2, 3, 6, 7]  # the first uniform group fills the batch
    with pytest.raises(ValueError, match="cannot keep 5 groups of 4"):
        pick_groups(scores, 2, 5)
