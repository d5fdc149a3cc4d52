"""Advantage and return estimators for RLHF (PPO/GAE, GRPO, RLOO, REINFORCE++).

Pure torch; this module must not import Ray (or transformers).

Conventions: token tensors are [B, T] over response tokens only, with ``mask`` [B, T]
(1 for real tokens, 0 for padding after EOS). The mask is assumed to be a contiguous
prefix per row; a 0 inside a row cuts the bootstrap/return chain there (it is treated as
the end of the episode). Outputs are 0 at padding, and values/rewards at padding never
leak into real positions. Sequence-level estimators take scores [B] with rows grouped
consecutively: rows ``g*G .. g*G+G-1`` are the G samples of prompt ``g``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_whiten

__all__ = [
    "gae_advantages",
    "discounted_returns",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "broadcast_to_tokens",
]


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def gae_advantages(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    r"""Generalized Advantage Estimation (Schulman et al. 2015, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation"), computed right to left:

    .. math::
        \delta_t = r_t + \gamma V_{t+1} m_{t+1} - V_t, \qquad
        A_t = \delta_t + \gamma \lambda\, m_{t+1} A_{t+1}, \qquad
        \hat{R}_t = A_t + V_t

    with :math:`V_T = A_T = m_T = 0` past the end. The last real token therefore does not
    bootstrap: every response is treated as terminal, including ones truncated at the
    length limit (a simplification shared with TRL/OpenRLHF). No whitening is done here;
    the caller whitens advantages if it wants to. Sequential loop over T (O(T) small kernels).

    Args:
        token_rewards: [B, T] per-token rewards (e.g. :func:`kl_penalized_token_rewards`).
        values: [B, T] critic values V(s_t) at each response token.
        mask: [B, T] response mask.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both [B, T], 0 at padding. Not detached.
    """
    if not (token_rewards.shape == values.shape == mask.shape) or token_rewards.dim() != 2:
        raise ValueError(
            f"token_rewards {tuple(token_rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must all be [B, T]"
        )
    m = mask.to(values.dtype)
    rewards = _zero_padding(token_rewards.to(values.dtype), mask)
    vals = _zero_padding(values, mask)
    batch, length = vals.shape
    next_value = vals.new_zeros(batch)
    next_adv = vals.new_zeros(batch)
    next_mask = vals.new_zeros(batch)
    advantages_reversed = []
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value * next_mask - vals[:, t]
        adv = delta + gamma * lam * next_mask * next_adv
        advantages_reversed.append(adv)
        next_value, next_adv, next_mask = vals[:, t], adv, m[:, t]
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    advantages = _zero_padding(advantages, mask)
    returns = _zero_padding(advantages + vals, mask)
    return advantages, returns


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    r"""Reward-to-go (Monte-Carlo return), right to left:

    .. math:: G_t = r_t + \gamma\, m_{t+1} G_{t+1}, \qquad G_T = 0

    Equal to :func:`gae_advantages` returns with ``lam = 1`` (for any values). Padding is 0
    in the output and padding rewards are ignored.

    Returns:
        [B, T] in ``token_rewards``' dtype.
    """
    if token_rewards.shape != mask.shape or token_rewards.dim() != 2:
        raise ValueError(f"token_rewards {tuple(token_rewards.shape)} and mask {tuple(mask.shape)} must be [B, T]")
    m = mask.to(token_rewards.dtype)
    rewards = _zero_padding(token_rewards, mask)
    batch, length = rewards.shape
    running = rewards.new_zeros(batch)
    next_mask = rewards.new_zeros(batch)
    out = []
    for t in reversed(range(length)):
        running = rewards[:, t] + gamma * next_mask * running
        out.append(running)
        next_mask = m[:, t]
    return _zero_padding(torch.stack(out[::-1], dim=1), mask)


def _check_groups(scores: Tensor, group_size: int) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {scores.shape[0]} is not divisible by group_size {group_size}; "
            "rows must be whole groups of samples per prompt"
        )


def grpo_advantages(scores: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    r"""Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, outcome supervision):

    .. math:: A_i = \frac{r_i - \mathrm{mean}(r_{group})}{\mathrm{std}(r_{group}) + \epsilon}

    ``std`` is the unbiased (n-1) sample std, as in ``torch.std`` and TRL's GRPOTrainer.
    With ``scale_by_std=False`` this is :math:`r_i - \mathrm{mean}` (Dr. GRPO, Liu et al.
    2025, which argues std scaling biases toward too-easy/too-hard prompts). A group whose
    scores are all equal gets 0 advantages. ``group_size == 1`` returns zeros (no baseline
    information; the unbiased std would be NaN).

    Args:
        scores: [B] sequence rewards, grouped consecutively by prompt.
        group_size: G, samples per prompt.

    Returns:
        [B] advantages (broadcast to tokens with :func:`broadcast_to_tokens`).

    Raises:
        ValueError: B not divisible by G (message names both), G < 1, or scores not 1-D.
    """
    _check_groups(scores, group_size)
    if group_size == 1:
        return torch.zeros_like(scores)
    grouped = scores.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    r"""REINFORCE Leave-One-Out advantages (Ahmadian et al. 2024, "Back to Basics"; Kool et
    al. 2019):

    .. math:: A_i = r_i - \frac{1}{G - 1} \sum_{j \ne i} r_j
              = \frac{G}{G-1}\,(r_i - \bar{r}_{group})

    Scores are used as given; if a KL penalty is wanted it should already be folded into
    the sequence score (as Ahmadian et al. do).

    Raises:
        ValueError: ``group_size < 2`` or B not divisible by G.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a leave-one-out baseline), got {group_size}")
    _check_groups(scores, group_size)
    grouped = scores.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    r"""REINFORCE++ advantages (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
    Aligning Large Language Models"):

    .. math:: G_t = \sum_{i \ge t} \gamma^{i-t} r_i, \qquad
              A_t = \frac{G_t - \mu_{batch}}{\sigma_{batch}}

    i.e. :func:`discounted_returns` whitened over ALL real tokens of the whole batch
    (global normalisation, no critic, no per-prompt baseline). ``token_rewards`` normally
    already holds the per-token KL penalty plus the score at the last token
    (:func:`kl_penalized_token_rewards`). Padding is 0.

    Note: the statistics are over this call's batch only; in data-parallel training each
    rank whitens its own shard unless the caller gathers first.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask, shift_mean=True)


def broadcast_to_tokens(sequence_values: Tensor, mask: Tensor) -> Tensor:
    r"""Give each real token its sequence's value: :math:`A_{b,t} = A_b\, m_{b,t}`.

    Used for GRPO/RLOO outcome advantages. [B] -> [B, T], 0 at padding, dtype of
    ``sequence_values``.
    """
    if sequence_values.dim() != 1 or mask.dim() != 2 or sequence_values.shape[0] != mask.shape[0]:
        raise ValueError(
            f"expected sequence_values [B] and mask [B, T]; got {tuple(sequence_values.shape)} and {tuple(mask.shape)}"
        )
    return sequence_values.unsqueeze(1) * mask.to(sequence_values.dtype)
