"""Policy losses beyond PPO's token-level clip: GSPO (sequence-level ratio and clip) and CISPO (clipped
importance-weight REINFORCE), and the table the policy worker picks its loss from.

Pure torch, like the rest of the package. Every loss takes the same arguments as
:func:`~kuberlhf.algorithms.losses.ppo_policy_loss` and returns ``(loss, stats)`` with the same statistics, so the
worker treats them alike; ``unit`` says what the loss is a mean over (tokens or sequences), which is how gradient
accumulation weighs its micro-batches.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from .losses import ppo_policy_loss
from .masked import masked_mean

__all__ = ["gspo_policy_loss", "cispo_policy_loss", "PolicyLoss", "POLICY_LOSSES"]


def _zeroed_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros((), dtype=logprobs.dtype,
                                                                         device=logprobs.device))


def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float | None = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Group Sequence Policy Optimization (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7):
    one importance ratio per sequence, the geometric mean of its tokens' ratios, clipped per sequence:

    .. math::
        s_i = \exp\Big(\frac{1}{|y_i|} \sum_{t} \log\frac{\pi(y_{i,t})}{\pi_{old}(y_{i,t})}\Big), \qquad
        L = \frac{1}{B} \sum_i \max\big(-A_i s_i,\; -A_i\, \mathrm{clip}(s_i, 1-\epsilon_{low}, 1+\epsilon_{high})\big)

    :math:`A_i` is the sequence's advantage (the masked mean of ``advantages`` over its tokens, which for GRPO
    advantages broadcast to tokens is the group-normalised reward). The loss is a mean over sequences, so each
    sequence weighs the same whatever its length (``unit="sequence"``), as in the paper. The paper's clip range is
    3e-4 / 4e-4: a sequence ratio moves much less than a token's. Without ``dual_clip`` (PPO only).

    ``token_weights`` (truncated importance sampling against the rollout engine) weigh each sequence by their mean
    over its tokens. A sequence without real tokens contributes 0.

    Stats: ``clip_fraction`` (share of sequences whose clipped term is strictly larger), ``approx_kl`` (k3 of the
    token log ratios, as PPO's), ``ratio_mean`` (mean of :math:`s_i`), ``dual_clip_fraction`` (0).
    """
    if dual_clip is not None:
        raise ValueError("gspo clips whole sequences; dual_clip applies to ppo's token-level clip only")
    if clip_low is None:
        clip_low = 1.0
    if not 0.0 <= clip_low <= 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low <= 1 and clip_high >= 0; got clip_low={clip_low}, clip_high={clip_high}")
    real = mask.to(logprobs.dtype)
    lengths = real.sum(-1)
    has_tokens = lengths > 0
    log_ratio = _zeroed_log_ratio(logprobs, old_logprobs, mask)
    sequence_ratio = torch.exp(log_ratio.sum(-1) / lengths.clamp(min=1))
    sequence_advantage = (advantages.to(logprobs.dtype) * real).sum(-1) / lengths.clamp(min=1)
    unclipped = -sequence_advantage * sequence_ratio
    clipped = -sequence_advantage * sequence_ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_sequence = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        weights = (token_weights.detach().to(per_sequence.dtype) * real).sum(-1) / lengths.clamp(min=1)
        per_sequence = per_sequence * weights
    per_sequence = torch.where(has_tokens, per_sequence, torch.zeros_like(per_sequence))
    count = has_tokens.sum().clamp(min=1)
    loss = per_sequence.sum() / count
    with torch.no_grad():
        counted = has_tokens.to(logprobs.dtype)
        neg = -log_ratio.detach()
        stats = {
            "clip_fraction": ((clipped > unclipped).to(logprobs.dtype) * counted).sum() / count,
            "approx_kl": masked_mean(torch.expm1(neg) - neg, mask),
            "ratio_mean": (sequence_ratio.detach() * counted).sum() / count,
            "dual_clip_fraction": torch.zeros((), dtype=logprobs.dtype, device=logprobs.device),
        }
    return loss, stats


def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float | None = None,
    clip_high: float = 4.0,
    dual_clip: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""CISPO, clipped importance sampling policy optimisation (MiniMax 2025, "MiniMax-M1", eq. 4-5): REINFORCE
    with each token's importance weight clipped and detached, so that no token loses its gradient (PPO's clip
    drops the gradient of every clipped token; CISPO only bounds its weight):

    .. math::
        r_t = \frac{\pi(y_t)}{\pi_{old}(y_t)}, \qquad
        \hat r_t = \mathrm{clip}(r_t, 1-\epsilon_{low}, 1+\epsilon_{high}), \qquad
        L = -\frac{1}{\sum_i |y_i|} \sum_{i,t} \mathrm{sg}(\hat r_t)\, A_{i,t} \log\pi(y_{i,t})

    a token mean over the batch (``unit="token"``). ``clip_low=None`` leaves the weight unbounded below (the
    paper's setting); the default ``clip_high=4`` caps it at 5, ScaleRL's (Khatri et al. 2025) and TRL's
    ``epsilon_high=5.0`` for ``loss_type="cispo"`` (TRL's ``epsilon_high`` is the cap itself, ours is
    ``cap - 1`` as for PPO's clip). With :math:`r_t = 1` (one update per batch) the gradient is REINFORCE's,
    :math:`-A_t \nabla \log\pi(y_t)`. Without ``dual_clip`` (PPO only).

    Stats: ``clip_fraction`` (share of real tokens whose weight is clipped), ``approx_kl``, ``ratio_mean``,
    ``dual_clip_fraction`` (0).
    """
    if dual_clip is not None:
        raise ValueError("cispo bounds the importance weight itself; dual_clip applies to ppo's clip only")
    if clip_high < 0.0 or (clip_low is not None and not 0.0 <= clip_low <= 1.0):
        raise ValueError(f"need 0 <= clip_low <= 1 (or None) and clip_high >= 0; got clip_low={clip_low}, "
                         f"clip_high={clip_high}")
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = _zeroed_log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio.detach())
    clipped_ratio = ratio.clamp(min=None if clip_low is None else 1.0 - clip_low, max=1.0 + clip_high)
    weight = clipped_ratio if token_weights is None else clipped_ratio * token_weights.detach().to(ratio.dtype)
    per_token = -weight * advantages.to(logprobs.dtype) * torch.where(mask.bool(), logprobs, zero)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        neg = -log_ratio.detach()
        stats = {
            "clip_fraction": masked_mean((clipped_ratio != ratio).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(neg) - neg, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "dual_clip_fraction": zero.clone(),
        }
    return loss, stats


class PolicyLoss(NamedTuple):
    """A policy loss and what it averages over (how micro-batches are weighed in gradient accumulation)."""

    function: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    unit: Literal["token", "sequence"]


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo": PolicyLoss(ppo_policy_loss, "token"),
    "gspo": PolicyLoss(gspo_policy_loss, "sequence"),
    "cispo": PolicyLoss(cispo_policy_loss, "token"),
}
