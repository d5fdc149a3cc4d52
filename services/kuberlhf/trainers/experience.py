"""From scored rollouts to an Experience: reward shaping, KL penalty, advantages and returns, with the estimator
the algorithm's descriptor names (`kuberlhf.algorithms.registry`).

Pure torch (no Ray): every number comes from `kuberlhf.algorithms`. The policy log-probs used for the KL
estimate are the old policy's when the trainer recomputed them, else the rollout engine's (same weights).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from kuberlhf.algorithms import (
    broadcast_to_tokens,
    gae_advantages,
    grpo_advantages,
    groups_with_signal,
    kl_penalized_token_rewards,
    kl_penalty,
    masked_mean,
    masked_whiten,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
)
from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.plan import AdvantageConfig
from kuberlhf.telemetry.monitor import pearson


def make_experience(
    config: AdvantageConfig,
    rollout: RolloutBatch,
    scores: Tensor,
    ref_logprobs: Tensor | None,
    old_logprobs: Tensor | None,
    values: Tensor | None,
) -> tuple[Experience, dict[str, float]]:
    mask = rollout.response_mask
    lengths = rollout.response_lengths()
    raw_scores = scores
    if config.overlong is not None:
        o = config.overlong
        scores = scores + overlong_penalty(lengths, o.max_length, o.buffer, o.penalty).to(scores.dtype)
    policy_logprobs = old_logprobs if old_logprobs is not None else rollout.rollout_logprobs
    if ref_logprobs is None:
        kl = penalty = torch.zeros_like(mask)
    else:  # k1 is reported (the usual "KL" of RLHF logs); the configured estimator is what is optimised
        kl = kl_penalty(policy_logprobs, ref_logprobs, "k1") * mask
        penalty = kl_penalty(policy_logprobs, ref_logprobs, config.kl_estimator) * mask
    reward_kl_coef = config.kl_coef if config.kl_penalty == "reward" else 0.0

    returns = None
    if config.estimator == "gae":
        token_rewards = kl_penalized_token_rewards(scores, penalty, mask, reward_kl_coef)
        advantages, returns = gae_advantages(token_rewards, values, mask, config.gamma, config.gae_lambda)
        advantages = masked_whiten(advantages, mask)
    elif config.estimator == "reinforce_pp":
        token_rewards = kl_penalized_token_rewards(scores, penalty, mask, reward_kl_coef)
        advantages = reinforce_pp_advantages(token_rewards, mask, config.gamma)
    else:
        sequence_rewards = scores - reward_kl_coef * (penalty * mask).sum(-1)
        if config.estimator == "grpo":
            sequence_advantages = grpo_advantages(sequence_rewards, config.group_size, config.scale_rewards)
        else:
            sequence_advantages = rloo_advantages(sequence_rewards, config.group_size)
        advantages = broadcast_to_tokens(sequence_advantages, mask)

    extra: dict[str, float] = {}
    if config.only_groups_with_signal:
        rollout, extra = _without_uniform_groups(rollout, raw_scores, config.group_size)
    experience = Experience(
        rollout=rollout,
        advantages=advantages,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs if config.kl_penalty == "loss" else None,
        returns=returns,
        old_values=values if config.estimator == "gae" else None,
    )
    metrics = {
        "reward/mean": float(raw_scores.mean()),
        "reward/std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
        "reward/min": float(raw_scores.min()),
        "reward/max": float(raw_scores.max()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "reward/length_correlation": pearson(lengths.tolist(), raw_scores.tolist()),
        "kl/sequence": float(kl.sum(-1).mean()),
        "kl/token": float(masked_mean(kl, mask)),
        "kl/coef": config.kl_coef,
        "advantages/mean": float(masked_mean(advantages, mask)),
        "advantages/std": float(masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt()),
    }
    if config.overlong is not None:
        metrics["reward/overlong_penalty"] = float((scores - raw_scores).mean())
    if values is not None:
        metrics["critic/values_mean"] = float(masked_mean(values, mask))
    return experience, {**metrics, **extra}


def _without_uniform_groups(rollout: RolloutBatch, scores: Tensor, group_size: int
                            ) -> tuple[RolloutBatch, dict[str, float]]:
    """The rollout with the response mask of every group whose rewards are all equal zeroed, so the loss skips
    them (DAPO's dynamic-sampling filter, without refilling the batch); unchanged when no group has a signal
    (their advantages are all 0 then anyway). The batch keeps its shape, so it still splits over the ranks."""
    keep = groups_with_signal(scores, group_size)
    metrics = {"dapo/groups_kept": float(keep.sum()) / group_size, "dapo/groups": len(scores) / group_size}
    if not keep.any() or keep.all():
        return rollout, metrics
    kept_mask = rollout.response_mask * keep.unsqueeze(1).to(rollout.response_mask.dtype)
    return dataclasses.replace(rollout, response_mask=kept_mask), metrics
