"""KL penalties between the policy and the frozen reference model.

Per-token KL estimators, the KL-shaped token rewards used by PPO-style RLHF and the
adaptive KL coefficient controller. Pure torch; this module must not import Ray (or
transformers).

Sign convention everywhere: ``log r = ref_logprobs - logprobs`` (reference over policy),
evaluated at tokens sampled from the policy, so every estimator targets KL(pi || pi_ref).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["kl_penalty", "kl_penalized_token_rewards", "adaptive_kl_coef"]

KLEstimator = Literal["k1", "k2", "k3"]

_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    r"""Per-token sample estimate of KL(pi || pi_ref).

    From Schulman, "Approximating KL Divergence" (2020 blog post), with samples
    :math:`x \sim \pi` and :math:`\log r = \log \pi_{ref}(x) - \log \pi(x)`:

    * ``k1`` = :math:`-\log r` -- unbiased, high variance, can be negative per token.
    * ``k2`` = :math:`\tfrac{1}{2} (\log r)^2` -- biased (low bias near pi = pi_ref),
      always >= 0, low variance.
    * ``k3`` = :math:`(r - 1) - \log r` -- unbiased and always >= 0 (used by GRPO,
      Shao et al. 2024).

    For ``k3`` the log ratio is clamped to [-20, 20] before ``exp`` (and the same clamped
    value is used in the ``- log r`` term) so a token the reference finds far likelier than
    the policy cannot overflow to inf; beyond the clamp the estimate is a lower bound and
    its gradient is 0. ``k1``/``k2`` are not clamped.

    Args:
        logprobs: log pi(x_t) of the sampled tokens, any shape (usually [B, T]).
        ref_logprobs: log pi_ref(x_t), same shape.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        Tensor of the same shape; padding is NOT masked here (callers mask).

    Raises:
        ValueError: unknown estimator.
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        log_ratio = log_ratio.clamp(min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of 'k1', 'k2', 'k3'")


def kl_penalized_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    r"""Token rewards for PPO-RLHF: a per-token KL penalty plus the sequence score at the end.

    Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), Ouyang et
    al. 2022:

    .. math:: r_t = -\beta\, \mathrm{KL}_t + \mathbb{1}[t = t_{last}]\; R(x, y)

    where :math:`t_{last}` is the index of the last 1 in the row's mask (the EOS token, or
    the last token of a truncated response).

    Notes:
        * Rows whose mask is all zeros (empty responses) get no score at all: there is no
          token to carry it. Their rewards are all 0.
        * Padding positions are 0 whatever ``kl`` holds there.
        * Nothing is detached; pass detached ``scores``/``kl`` (rewards are constants for
          the policy update).

    Args:
        scores: [B] sequence-level reward-model scores.
        kl: [B, T] per-token KL estimate (e.g. from :func:`kl_penalty`).
        mask: [B, T] response mask.
        kl_coef: :math:`\beta`.

    Returns:
        [B, T] token rewards in ``kl``'s dtype.
    """
    if scores.dim() != 1 or kl.dim() != 2 or scores.shape[0] != kl.shape[0]:
        raise ValueError(f"expected scores [B] and kl [B, T]; got {tuple(scores.shape)} and {tuple(kl.shape)}")
    if kl.shape != mask.shape:
        raise ValueError(f"kl {tuple(kl.shape)} and mask {tuple(mask.shape)} must have the same shape")
    real = mask.bool()
    zeros = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(real, -kl_coef * kl, zeros)
    positions = torch.arange(1, kl.shape[1] + 1, device=kl.device)
    last = (positions * real).amax(dim=1) - 1  # -1 for an all-zero row
    is_last = positions.unsqueeze(0) - 1 == last.unsqueeze(1)  # never true when last == -1
    return rewards + torch.where(is_last, scores.to(kl.dtype).unsqueeze(1), zeros)


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target_kl: float, horizon: int, n_steps: int) -> float:
    r"""One step of the adaptive KL controller of Ziegler et al. 2019 (section 2.2).

    .. math:: e_t = \mathrm{clip}\left(\frac{KL_{obs}}{KL_{target}} - 1, -0.2, 0.2\right),
              \qquad \beta_{t+1} = \beta_t \left(1 + K_\beta\, e_t\right),
              \quad K_\beta = \frac{n\_steps}{horizon}

    ``n_steps`` is the number of samples (or steps) seen since the last update, as in the
    TRL/``lm-human-preferences`` implementation. The coefficient grows when the observed KL
    exceeds the target and shrinks when it is below; the proportional error is capped at
    +-20%. Note the update is not itself clamped to stay positive: ``n_steps > 5 * horizon``
    with KL far below target would drive the coefficient to <= 0 -- keep n_steps << horizon.

    Raises:
        ValueError: ``target_kl <= 0`` or ``horizon <= 0``.
    """
    if target_kl <= 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    error = min(max(observed_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
