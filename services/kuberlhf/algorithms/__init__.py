"""Pure-torch RLHF math: masked statistics, KL penalties, advantages and losses; and the registry of algorithm
descriptors (`kuberlhf.algorithms.registry`, which needs no torch).

Nothing in this package may import Ray or transformers; it is imported by trainer workers and unit tests alike.
The torch functions are loaded on first use, so the operator (no torch) can import the registry.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "advantages": ("broadcast_to_tokens", "discounted_returns", "gae_advantages", "grpo_advantages",
                   "reinforce_pp_advantages", "rloo_advantages"),
    "kl": ("adaptive_kl_coef", "kl_penalized_token_rewards", "kl_penalty"),
    "losses": ("entropy_from_logits", "kl_loss", "ppo_policy_loss", "token_logprobs", "truncated_importance_weights",
               "value_loss"),
    "policy_losses": ("POLICY_LOSSES", "PolicyLoss", "cispo_policy_loss", "gspo_policy_loss"),
    "shaping": ("groups_with_signal", "overlong_penalty", "pick_groups"),
    "masked": ("masked_mean", "masked_var", "masked_whiten"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
