"""Losses of the offline stages: supervised fine-tuning, reward modelling, DPO (and IPO, hinge, cDPO) and KTO.

Pure torch, like the rest of `algorithms/`: inputs are per-token or per-sequence log-probabilities the caller
computed (policy and frozen reference), outputs a scalar loss to minimise and detached statistics. Sequence
log-probabilities are sums over the completion's tokens (`sequence_logprobs`); the prompt is never scored.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .masked import masked_mean

DPOLossType = Literal["sigmoid", "ipo", "hinge"]

__all__ = ["sequence_logprobs", "sft_loss", "reward_model_loss", "dpo_loss", "kto_kl_baseline", "kto_loss"]


def sequence_logprobs(token_logprobs: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    r"""Log-probability of each completion, :math:`\log \pi(y \mid x) = \sum_t m_t \log \pi(y_t \mid x, y_{<t})`,
    or its per-token mean :math:`\sum_t m_t \log \pi_t / \sum_t m_t` when ``average`` (IPO's length-normalised form).

    Args:
        token_logprobs: [B, T] log-probabilities of the completion tokens.
        mask: [B, T] 1 for completion tokens, 0 for padding.

    Returns:
        [B] float32.
    """
    total = (token_logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def sft_loss(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    r"""Negative log-likelihood of the target tokens, averaged over all target tokens of the batch:

    .. math:: \mathcal{L}_{SFT} = -\frac{1}{\sum_{i,t} m_{i,t}} \sum_{i,t} m_{i,t} \log \pi(y_{i,t} \mid x_i, y_{i,<t})

    ``mask`` selects the tokens that are trained on: every token for language modelling, only the completion
    for completion-only training.
    """
    return -masked_mean(token_logprobs, mask)


def reward_model_loss(chosen_rewards: Tensor, rejected_rewards: Tensor,
                      margin: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Pairwise Bradley-Terry loss of a scalar reward model (InstructGPT), with Llama 2's optional margin m:

    .. math:: \mathcal{L}_{RM} = -\frac{1}{B} \sum_i \log \sigma\big(r(x_i, y^w_i) - r(x_i, y^l_i) - m_i\big)

    Returns the loss and statistics: ``accuracy`` (share of pairs with :math:`r^w > r^l`), ``margin``
    (mean :math:`r^w - r^l`).
    """
    difference = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(difference - (margin if margin is not None else 0.0)).mean()
    stats = {"accuracy": (difference > 0).float().mean().detach(), "margin": difference.mean().detach()}
    return loss, stats


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor,
             beta: float, loss_type: DPOLossType = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Direct preference optimisation on sequence log-probabilities of the chosen (w) and rejected (l) answers.

    With the log-ratio difference :math:`h = (\log \pi(y^w) - \log \pi_{ref}(y^w)) - (\log \pi(y^l) - \log \pi_{ref}(y^l))`:

    * ``sigmoid`` (DPO, Rafailov et al. 2023; cDPO label smoothing :math:`\varepsilon`, Mitchell 2023):
      :math:`\mathcal{L} = -(1 - \varepsilon) \log \sigma(\beta h) - \varepsilon \log \sigma(-\beta h)`
    * ``ipo`` (Azar et al. 2023): :math:`\mathcal{L} = (h - \frac{1}{2\beta})^2`, meant for length-averaged
      log-probabilities (``sequence_logprobs(..., average=True)``)
    * ``hinge`` (SLiC, Zhao et al. 2023): :math:`\mathcal{L} = \max(0, 1 - \beta h)`

    averaged over the pairs. Statistics: the implicit rewards :math:`\beta(\log \pi - \log \pi_{ref})` of
    chosen and rejected answers (``chosen_reward``, ``rejected_reward``), their mean difference (``margin``)
    and the share of pairs where the chosen one's is higher (``accuracy``).
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    stats = {"chosen_reward": chosen_reward.mean(), "rejected_reward": rejected_reward.mean(),
             "margin": (chosen_reward - rejected_reward).mean(),
             "accuracy": (chosen_reward > rejected_reward).float().mean()}
    return losses.mean(), stats


def kto_kl_baseline(policy_mismatched: Tensor, reference_mismatched: Tensor) -> Tensor:
    r"""KTO's reference point :math:`z_0 = \max\big(0, \frac{1}{B} \sum_i \log \pi(y'_i \mid x_i) - \log \pi_{ref}(y'_i \mid x_i)\big)`,
    an estimate of :math:`KL(\pi \| \pi_{ref})` from completions paired with another example's prompt
    (:math:`y'_i` is not an answer to :math:`x_i`), clamped at zero and detached (no gradient flows through it)."""
    return (policy_mismatched - reference_mismatched).mean().clamp(min=0).detach()


def kto_loss(policy: Tensor, reference: Tensor, desirable: Tensor, kl_baseline: Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired, labelled completions.

    With the log-ratio :math:`r = \log \pi(y \mid x) - \log \pi_{ref}(y \mid x)` and the reference point
    :math:`z_0` (`kto_kl_baseline`):

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_i \begin{cases}
            \lambda_D \big(1 - \sigma(\beta (r_i - z_0))\big) & y_i \text{ desirable} \\
            \lambda_U \big(1 - \sigma(\beta (z_0 - r_i))\big) & y_i \text{ undesirable}
        \end{cases}

    Args:
        policy, reference: [B] sequence log-probabilities.
        desirable: [B] bool labels.

    Statistics: the mean implicit reward :math:`\beta r` of desirable and undesirable completions (NaN when a
    batch has none of a kind) and ``kl_baseline``.
    """
    ratio = policy - reference
    desirable = desirable.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl_baseline))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl_baseline - ratio))))
    reward = beta * ratio.detach()
    nan = torch.tensor(float("nan"), device=reward.device)
    stats = {"desirable_reward": reward[desirable].mean() if desirable.any() else nan,
             "undesirable_reward": reward[~desirable].mean() if (~desirable).any() else nan,
             "kl_baseline": kl_baseline.detach()}
    return losses.mean(), stats
