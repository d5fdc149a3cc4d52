"""Offline-stage losses against values computed by hand (math.log / math.exp, not the functions under test)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from kuberlhf.algorithms.preference import (
    dpo_loss,
    kto_kl_baseline,
    kto_loss,
    reward_model_loss,
    sequence_logprobs,
    sft_loss,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sequence_logprobs_sum_or_average_the_completion_tokens_only():
    token_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert_close(sequence_logprobs(token_logprobs, mask), t(-3.0, -1.0))
    assert_close(sequence_logprobs(token_logprobs, mask, average=True), t(-1.5, -1.0 / 3))


def test_sft_loss_is_the_token_mean_nll_over_the_whole_batch():
    token_logprobs = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert_close(sft_loss(token_logprobs, mask), torch.tensor((1 + 3 + 4) / 3))


def test_reward_model_loss_is_bradley_terry_with_an_optional_margin():
    loss, stats = reward_model_loss(t(2.0, 0.0), t(0.0, 1.0))
    assert_close(loss, torch.tensor(-(log_sigmoid(2.0) + log_sigmoid(-1.0)) / 2))
    assert_close(stats["accuracy"], torch.tensor(0.5))
    assert_close(stats["margin"], torch.tensor(0.5))
    with_margin, _ = reward_model_loss(t(2.0, 0.0), t(0.0, 1.0), margin=t(1.0, 1.0))
    assert_close(with_margin, torch.tensor(-(log_sigmoid(1.0) + log_sigmoid(-2.0)) / 2))


# chosen log-ratio +1, rejected log-ratio -1: h = 2
PAIR = dict(policy_chosen=t(-1.0), policy_rejected=t(-3.0), reference_chosen=t(-2.0), reference_rejected=t(-2.0))


def test_dpo_sigmoid_loss_and_implicit_rewards():
    loss, stats = dpo_loss(**PAIR, beta=0.5)
    assert_close(loss, torch.tensor(-log_sigmoid(1.0)))
    assert_close(stats["chosen_reward"], torch.tensor(0.5))
    assert_close(stats["rejected_reward"], torch.tensor(-0.5))
    assert_close(stats["margin"], torch.tensor(1.0))
    assert_close(stats["accuracy"], torch.tensor(1.0))


def test_cdpo_label_smoothing_mixes_in_the_flipped_preference():
    loss, _ = dpo_loss(**PAIR, beta=0.5, label_smoothing=0.1)
    assert_close(loss, torch.tensor(-0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0)))


def test_ipo_loss_is_the_squared_distance_to_half_over_beta():
    loss, _ = dpo_loss(**PAIR, beta=0.25, loss_type="ipo")
    assert_close(loss, torch.tensor((2.0 - 1 / (2 * 0.25)) ** 2))  # (2 - 2)^2 = 0
    loss, _ = dpo_loss(**PAIR, beta=1.0, loss_type="ipo")
    assert_close(loss, torch.tensor((2.0 - 0.5) ** 2))


def test_hinge_loss_is_zero_beyond_the_margin():
    loss, _ = dpo_loss(**PAIR, beta=0.5, loss_type="hinge")
    assert_close(loss, torch.tensor(0.0))
    loss, _ = dpo_loss(**PAIR, beta=0.25, loss_type="hinge")
    assert_close(loss, torch.tensor(0.5))


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected_answer():
    chosen, rejected = t(-1.0).requires_grad_(), t(-3.0).requires_grad_()
    loss, _ = dpo_loss(chosen, rejected, t(-2.0), t(-2.0), beta=0.5)
    loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()  # minimising: d loss / d chosen < 0


def test_unknown_dpo_loss_type_is_refused():
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        dpo_loss(**PAIR, beta=0.1, loss_type="squared")


def test_kto_kl_baseline_is_the_clamped_mean_log_ratio_of_mismatched_pairs():
    assert_close(kto_kl_baseline(t(-1.0, -1.5), t(-2.0, -2.0)), torch.tensor(0.75))
    assert_close(kto_kl_baseline(t(-3.0, -3.0), t(-2.0, -2.0)), torch.tensor(0.0))  # negative -> 0


def test_kto_loss_weights_desirable_and_undesirable_completions():
    loss, stats = kto_loss(policy=t(-1.0, -2.0), reference=t(-2.0, -1.0), desirable=torch.tensor([True, False]),
                           kl_baseline=torch.tensor(0.5), beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    desirable = 1.0 * (1 - sigmoid(1.0 - 0.5))
    undesirable = 2.0 * (1 - sigmoid(0.5 - (-1.0)))
    assert_close(loss, torch.tensor((desirable + undesirable) / 2))
    assert_close(stats["desirable_reward"], torch.tensor(1.0))
    assert_close(stats["undesirable_reward"], torch.tensor(-1.0))


def test_kto_statistics_of_a_missing_kind_are_nan_not_an_error():
    _, stats = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), torch.tensor(0.0), beta=0.1)
    assert math.isnan(stats["undesirable_reward"].item())


def test_weighted_means_of_statistics_leave_out_nan():
    from kuberlhf.trainers.offline_loop import WeightedMeans

    means = WeightedMeans()
    means.add({"loss": 1.0, "undesirable_reward": float("nan")}, 0.25)
    means.add({"loss": 2.0, "undesirable_reward": -1.0}, 0.75)
    assert means.result() == {"loss": 1.75, "undesirable_reward": -1.0}
