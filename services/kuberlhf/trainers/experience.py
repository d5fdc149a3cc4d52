"""From scored rollouts to an Experience: KL penalty, advantages and returns, per algorithm.

Pure torch (no Ray): every number comes from `kuberlhf.algorithms`. The policy log-probs used for the KL
estimate are the old policy's when the trainer recomputed them, else the rollout engine's (same weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kuberlhf.algorithms import (
    broadcast_to_tokens,
    gae_advantages,
    grpo_advantages,
    kl_penalized_token_rewards,
    kl_penalty,
    masked_mean,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
)
from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.telemetry.monitor import pearson


@dataclass(frozen=True)
class AdvantageConfig:
    algorithm: str
    group_size: int
    kl_coef: float
    kl_penalty: str  # "reward" | "loss"
    kl_estimator: str
    gamma: float
    gae_lambda: float
    scale_rewards: bool


def make_experience(
    config: AdvantageConfig,
    rollout: RolloutBatch,
    scores: Tensor,
    ref_logprobs: Tensor | None,
    old_logprobs: Tensor | None,
    values: Tensor | None,
) -> tuple[Experience, dict[str, float]]:
    mask = rollout.response_mask
    policy_logprobs = old_logprobs if old_logprobs is not None else rollout.rollout_logprobs
    if ref_logprobs is None:
        kl = penalty = torch.zeros_like(mask)
    else:  # k1 is reported (the usual "KL" of RLHF logs); the configured estimator is what is optimised
        kl = kl_penalty(policy_logprobs, ref_logprobs, "k1") * mask
        penalty = kl_penalty(policy_logprobs, ref_logprobs, config.kl_estimator) * mask
    reward_kl_coef = config.kl_coef if config.kl_penalty == "reward" else 0.0

    returns = None
    if config.algorithm == "ppo":
        token_rewards = kl_penalized_token_rewards(scores, penalty, mask, reward_kl_coef)
        advantages, returns = gae_advantages(token_rewards, values, mask, config.gamma, config.gae_lambda)
        advantages = masked_whiten(advantages, mask)
    elif config.algorithm == "reinforce_pp":
        token_rewards = kl_penalized_token_rewards(scores, penalty, mask, reward_kl_coef)
        advantages = reinforce_pp_advantages(token_rewards, mask, config.gamma)
    else:
        sequence_rewards = scores - reward_kl_coef * (penalty * mask).sum(-1)
        if config.algorithm == "grpo":
            sequence_advantages = grpo_advantages(sequence_rewards, config.group_size, config.scale_rewards)
        else:
            sequence_advantages = rloo_advantages(sequence_rewards, config.group_size)
        advantages = broadcast_to_tokens(sequence_advantages, mask)

    experience = Experience(
        rollout=rollout,
        advantages=advantages,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs if config.kl_penalty == "loss" else None,
        returns=returns,
        old_values=values if config.algorithm == "ppo" else None,
    )
    lengths = rollout.response_lengths()
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
        "reward/min": float(scores.min()),
        "reward/max": float(scores.max()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "reward/length_correlation": pearson(lengths.tolist(), scores.tolist()),
        "kl/sequence": float(kl.sum(-1).mean()),
        "kl/token": float(masked_mean(kl, mask)),
        "kl/coef": config.kl_coef,
        "advantages/mean": float(masked_mean(advantages, mask)),
        "advantages/std": float(masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt()),
    }
    if values is not None:
        metrics["critic/values_mean"] = float(masked_mean(values, mask))
    return experience, metrics
