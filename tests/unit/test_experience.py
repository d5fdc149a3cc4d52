"""From scored rollouts to advantages: each algorithm's wiring, checked by hand on tiny batches."""

from __future__ import annotations

import pytest
import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.engines.generation import _until_first_eos
from kuberlhf.plan import AdvantageConfig
from kuberlhf.trainers.experience import make_experience


def rollout(rows: int = 4, width: int = 2) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        response_ids=torch.ones(rows, width, dtype=torch.long), response_mask=torch.ones(rows, width),
        rollout_logprobs=torch.full((rows, width), -1.0), prompts=["p"] * rows, completions=["c"] * rows,
    )


def config(advantage: str, kl_coef: float = 0.0, penalty: str = "reward", estimator: str = "k1", **extra) -> AdvantageConfig:
    return AdvantageConfig(advantage, group_size=2, kl_coef=kl_coef, kl_penalty=penalty, kl_estimator=estimator,
                           gamma=1.0, gae_lambda=1.0, scale_rewards=False, **extra)


def test_grpo_broadcasts_group_centred_rewards_to_every_token():
    experience, metrics = make_experience(config("grpo"), rollout(), torch.tensor([1.0, 0.0, 2.0, 2.0]), None, None, None)
    assert experience.advantages.tolist() == [[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]
    assert metrics["reward/mean"] == 1.25


def test_rloo_subtracts_the_kl_penalty_before_the_leave_one_out_baseline():
    ref = torch.full((4, 2), -1.5)  # k1 per token = -1 - (-1.5) = 0.5, per sequence 1.0
    experience, metrics = make_experience(config("rloo", kl_coef=0.5), rollout(), torch.tensor([1.0, 0.0, 0.0, 0.0]),
                                          ref, None, None)
    # penalised rewards [0.5, -0.5, -0.5, -0.5]; leave-one-out: 0.5-(-0.5)=1, -0.5-0.5=-1, 0, 0
    assert experience.advantages[:, 0].tolist() == [1.0, -1.0, 0.0, 0.0]
    assert metrics["kl/sequence"] == pytest.approx(1.0)


def test_grpo_keeps_reference_logprobs_for_the_kl_loss_term():
    ref = torch.full((4, 2), -1.5)
    experience, _ = make_experience(config("grpo", 0.1, penalty="loss", estimator="k3"), rollout(),
                                    torch.zeros(4), ref, None, None)
    assert experience.ref_logprobs is ref
    assert experience.advantages.abs().sum() == 0  # the KL is not in the rewards


def test_ppo_returns_are_score_minus_kl_to_go_and_advantages_are_whitened():
    ref = torch.full((4, 2), -1.5)
    values = torch.zeros(4, 2)
    experience, _ = make_experience(config("gae", kl_coef=1.0), rollout(), torch.tensor([1.0, 0.0, 1.0, 0.0]),
                                    ref, None, values)
    # token rewards: [-0.5, -0.5 + score]; gamma = lambda = 1, V = 0: returns = [score - 1, score - 0.5]
    assert experience.returns[0].tolist() == [0.0, 0.5]
    assert experience.returns[1].tolist() == [-1.0, -0.5]
    assert float(experience.advantages.mean()) == pytest.approx(0.0, abs=1e-6)
    assert experience.old_values is values


def test_response_mask_ends_after_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert _until_first_eos(ids, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_dapo_overlong_shaping_lowers_the_scores_of_long_completions_before_the_advantages():
    from kuberlhf.plan import Overlong

    batch = rollout()  # every completion is 2 tokens long
    shaped = config("grpo", overlong=Overlong(max_length=3, buffer=2, penalty=1.0))  # past 1 token: -(|y|-1)/2
    experience, metrics = make_experience(shaped, batch, torch.tensor([1.0, 0.0, 0.0, 0.0]), None, None, None)
    assert metrics["reward/overlong_penalty"] == pytest.approx(-0.5)
    assert metrics["reward/mean"] == 0.25  # the task's reward, unshaped
    assert experience.advantages[:, 0].tolist() == [0.5, -0.5, 0.0, 0.0]  # equal shift: same group advantages


def test_dapo_dynamic_sampling_leaves_groups_without_signal_out_of_the_loss():
    experience, metrics = make_experience(config("grpo", only_groups_with_signal=True), rollout(),
                                          torch.tensor([1.0, 0.0, 2.0, 2.0]), None, None, None)
    assert experience.rollout.response_mask.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert (metrics["dapo/groups_kept"], metrics["dapo/groups"]) == (1.0, 2.0)
    uniform, _ = make_experience(config("grpo", only_groups_with_signal=True), rollout(), torch.ones(4), None, None,
                                 None)
    assert uniform.rollout.response_mask.sum() == 8  # nothing to learn from at all: the batch is left as it is
