"""Unit tests for kuberlhf.algorithms.advantages and .masked (hand-computed expected values)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from kuberlhf.algorithms import (
    broadcast_to_tokens,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
)

# ---------------------------------------------------------------- masked helpers


def test_masked_mean_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (1 + 2 + 4) / 3
    assert_close(masked_mean(values, mask), torch.tensor(7.0 / 3.0))
    # per row: (1 + 2) / 2, 4 / 1
    assert_close(masked_mean(values, mask, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert_close(masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])), torch.tensor(0.0))


def test_masked_mean_unaffected_by_inf_at_padding():
    mask = torch.tensor([1.0, 1.0, 0.0])
    assert_close(masked_mean(torch.tensor([1.0, 3.0, float("inf")]), mask), torch.tensor(2.0))


def test_masked_var_unbiased_and_biased():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # mean 2, squared deviations 1 + 0 + 1 = 2: unbiased 2/2 = 1, biased 2/3
    assert_close(masked_var(values, mask), torch.tensor(1.0))
    assert_close(masked_var(values, mask, unbiased=False), torch.tensor(2.0 / 3.0))


def test_masked_whiten_standardises_real_entries_and_zeros_padding():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # mean 2, unbiased std 1
    assert_close(masked_whiten(values, mask), torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    assert_close(masked_whiten(values, mask, shift_mean=False), torch.tensor([1.0, 2.0, 3.0, 0.0]))


# ---------------------------------------------------------------- GAE / returns


def test_gae_by_hand_single_row():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # gamma 0.9, lam 0.8 (gamma*lam = 0.72)
    # t2: delta = 1 - 0.7 = 0.3;               A2 = 0.3
    # t1: delta = 0.9*0.7 - 0.6 = 0.03;        A1 = 0.03 + 0.72*0.3 = 0.246
    # t0: delta = 0.9*0.6 - 0.5 = 0.04;        A0 = 0.04 + 0.72*0.246 = 0.21712
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))


def test_gae_stops_bootstrap_at_last_real_token():
    rewards = torch.tensor([[0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 42.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # t1 is terminal: delta = 1 - 0.6 = 0.4; A1 = 0.4
    # t0: delta = 0.9*0.6 - 0.5 = 0.04; A0 = 0.04 + 0.72*0.4 = 0.328
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.328, 0.4, 0.0]]))
    assert_close(ret, torch.tensor([[0.828, 1.0, 0.0]]))


def test_gae_with_lambda_one_equals_discounted_return_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # G = [0.81, 0.9, 1.0] with gamma 0.9; A = G - V = [0.31, 0.3, 0.3]
    adv, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    assert_close(adv, torch.tensor([[0.31, 0.3, 0.3]]))
    assert_close(adv, discounted_returns(rewards, mask, 0.9) - values)


def test_gae_padding_values_and_rewards_do_not_leak():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, generator=gen)
    values = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    adv_a, ret_a = gae_advantages(rewards, values, mask, gamma=0.99, lam=0.95)
    pad = mask == 0
    rewards_b = rewards.masked_fill(pad, 1e6)
    values_b = values.masked_fill(pad, -1e6)
    adv_b, ret_b = gae_advantages(rewards_b, values_b, mask, gamma=0.99, lam=0.95)
    assert_close(adv_a, adv_b)
    assert_close(ret_a, ret_b)
    assert (adv_a[pad] == 0).all() and (ret_a[pad] == 0).all()


def test_discounted_returns_by_hand_with_padding():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # gamma 0.5: row0 G2 = 3, G1 = 2 + 1.5 = 3.5, G0 = 1 + 1.75 = 2.75
    #            row1 G1 = 2, G0 = 1 + 1 = 2, pad 0
    expected = torch.tensor([[2.75, 3.5, 3.0], [2.0, 2.0, 0.0]])
    assert_close(discounted_returns(rewards, mask, 0.5), expected)


# ---------------------------------------------------------------- GRPO / RLOO


def test_grpo_normalises_within_each_group_with_unbiased_std():
    # group [1, 3]: mean 2, unbiased std sqrt(2) -> [-1/sqrt2, 1/sqrt2]; group [2, 2] -> 0
    out = grpo_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2)
    assert_close(out, torch.tensor([-0.707107, 0.707107, 0.0, 0.0]))


def test_grpo_group_of_three_by_hand():
    # [1, 0, 0]: mean 1/3, deviations [2/3, -1/3, -1/3], unbiased var (6/9)/2 = 1/3, std 0.57735
    # A = [1.154701, -0.577350, -0.577350]
    out = grpo_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3)
    assert_close(out, torch.tensor([1.154701, -0.577350, -0.577350]))


def test_grpo_without_std_scaling_only_centres():
    out = grpo_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group_size=2, scale_by_std=False)
    assert_close(out, torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_grpo_unequal_groups_error_names_both_numbers():
    with pytest.raises(ValueError, match=r"5.*2"):
        grpo_advantages(torch.zeros(5), group_size=2)


def test_grpo_group_size_one_gives_zeros():
    assert_close(grpo_advantages(torch.tensor([1.0, -4.0, 3.0]), group_size=1), torch.zeros(3))


def test_rloo_by_hand():
    # [1, 2, 6]: A0 = 1 - (2+6)/2 = -3; A1 = 2 - (1+6)/2 = -1.5; A2 = 6 - (1+2)/2 = 4.5
    # [0, 4, 2]: A0 = 0 - 3 = -3; A1 = 4 - 1 = 3; A2 = 2 - 2 = 0
    out = rloo_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 2.0]), group_size=3)
    assert_close(out, torch.tensor([-3.0, -1.5, 4.5, -3.0, 3.0, 0.0]))


def test_rloo_rejects_group_size_below_two():
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.tensor([1.0, 2.0]), group_size=1)


def test_rloo_unequal_groups_raise():
    with pytest.raises(ValueError, match=r"5.*2"):
        rloo_advantages(torch.zeros(5), group_size=2)


# ---------------------------------------------------------------- REINFORCE++ / broadcast


def test_reinforce_pp_whitens_returns_over_all_batch_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # gamma 1: returns row0 [1, 1, 1], row1 [2, 2, pad]
    # real tokens [1, 1, 1, 2, 2]: mean 1.4, unbiased var (3*0.16 + 2*0.36)/4 = 0.3
    # whitened: -0.4/sqrt(0.3) = -0.730297, 0.6/sqrt(0.3) = 1.095445
    expected = torch.tensor([[-0.730297, -0.730297, -0.730297], [1.095445, 1.095445, 0.0]])
    assert_close(reinforce_pp_advantages(rewards, mask), expected)


def test_reinforce_pp_padding_invariance():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    other = rewards.clone()
    other[1, 2] = -1e4
    assert_close(reinforce_pp_advantages(rewards, mask), reinforce_pp_advantages(other, mask))


def test_broadcast_to_tokens_zeros_padding():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
