"""Pure-torch RLHF math: masked statistics, KL penalties, advantages and losses.

Nothing in this package may import Ray or transformers; it is imported by trainer
workers and unit tests alike.
"""

from .advantages import (
    broadcast_to_tokens,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from .kl import adaptive_kl_coef, kl_penalized_token_rewards, kl_penalty
from .losses import (
    entropy_from_logits,
    kl_loss,
    ppo_policy_loss,
    token_logprobs,
    truncated_importance_weights,
    value_loss,
)
from .masked import masked_mean, masked_var, masked_whiten

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl_penalty",
    "kl_penalized_token_rewards",
    "adaptive_kl_coef",
    "gae_advantages",
    "discounted_returns",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "broadcast_to_tokens",
    "token_logprobs",
    "truncated_importance_weights",
    "entropy_from_logits",
    "ppo_policy_loss",
    "value_loss",
    "kl_loss",
]
