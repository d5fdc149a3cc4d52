"""Policy, value and KL losses (and log-prob/entropy helpers) for RLHF training.

Pure torch; this module must not import Ray (or transformers). All losses are
minimised, aggregated as a token mean over the real response tokens of the whole batch
(:func:`masked_mean`), and return statistics as detached scalar tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kl import KLEstimator, kl_penalty
from .masked import masked_mean, masked_var

__all__ = ["token_logprobs", "entropy_from_logits", "ppo_policy_loss", "value_loss", "kl_loss"]


def _scaled_float(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` in float32 with at most one new [B, T, V] tensor."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    if temperature != 1.0:
        # .float() already copied (non-float32 input): scale that copy in place. Safe for
        # autograd: the dtype-cast backward does not need its output.
        z = z.div_(temperature) if z is not logits else z / temperature
    return z


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Log-probability of each chosen token under ``softmax(logits / temperature)``:

    .. math:: \log \pi(x_t) = z_{t, x_t} - \log \sum_v \exp z_{t, v}, \qquad z = \ell / \tau

    Computed in float32 with one fused ``log_softmax`` (one kernel forward, one backward) and a gather;
    ``logits[:, t]`` must already be the logits that predict ``tokens[:, t]`` (shifting is the caller's job).
    Use the same temperature as the sampler.

    Args:
        logits: [B, T, V].
        tokens: [B, T] integer token ids.

    Returns:
        [B, T] float32.
    """
    logprobs = torch.log_softmax(_scaled_float(logits, temperature), dim=-1)
    return torch.gather(logprobs, dim=-1, index=tokens.long().unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def entropy_from_logits(logits: Tensor, temperature: float = 1.0, rows_per_chunk: int = 1024) -> Tensor:
    r"""Entropy of the categorical distribution ``softmax(logits / temperature)`` per token (no gradient):

    .. math:: H = -\sum_v \pi_v \log \pi_v, \qquad \log \pi = \mathrm{log\_softmax}(z)

    Computed in float32, ``rows_per_chunk`` tokens at a time, so the float32 temporaries are
    [rows_per_chunk, V] rather than [B, T, V] (with a 150k vocabulary that is 0.6 GB instead of several).
    Padding is not masked here.

    Returns:
        [B, T] float32.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    entropy = torch.empty(rows.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, rows.shape[0], rows_per_chunk):
        logprobs = torch.log_softmax(_scaled_float(rows[start : start + rows_per_chunk], temperature), dim=-1)
        entropy[start : start + rows_per_chunk] = -(logprobs.exp() * logprobs).sum(dim=-1)
    return entropy.reshape(logits.shape[:-1])


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""PPO clipped surrogate loss (Schulman et al. 2017), optionally dual-clipped (Ye et al.
    2020, "Mastering Complex Control in MOBA Games with Deep RL"):

    .. math::
        \rho_t = \exp(\log\pi(x_t) - \log\pi_{old}(x_t)), \qquad
        L_t = \max\left(-A_t \rho_t,\; -A_t\, \mathrm{clip}(\rho_t, 1-\epsilon_{low}, 1+\epsilon_{high})\right)

    and with dual clip :math:`c > 1`, for :math:`A_t < 0`: :math:`L_t \leftarrow \min(L_t, -c A_t)`.
    Asymmetric ``clip_low``/``clip_high`` allow DAPO-style "clip-higher". The loss is the
    token mean over all real tokens of the batch (long responses weigh more than in a
    per-sequence mean; a simplification shared with DAPO/verl's "token-mean").

    Sign: ``advantages`` > 0 means "make this token more likely"; the returned loss is to
    be minimised. The log ratio is zeroed at padding first, so garbage log-probs there
    cannot overflow ``exp`` or produce NaN gradients.

    Stats (detached scalars):
        * ``clip_fraction``: fraction of real tokens where the clipped term is strictly the
          larger one (the gradient is cut there).
        * ``approx_kl``: masked mean of k3 with :math:`\log r = \log\pi_{old} - \log\pi`,
          i.e. :math:`(r - 1) - \log r` (Schulman 2020 blog; the verl/OpenRLHF diagnostic).
          Tokens are samples of pi_old, so strictly this is unbiased for neither direction
          of the KL; it agrees with both to second order in the log ratio.
        * ``ratio_mean``: masked mean of :math:`\rho`.
        * ``dual_clip_fraction``: fraction of real tokens where the dual clip is active
          (0 when ``dual_clip`` is None).

    ``token_weights`` (optional, detached) multiply each token's loss before the mean, e.g. the
    truncated importance weights of :func:`truncated_importance_weights`.

    Raises:
        ValueError: ``dual_clip`` given and not > 1, or clip ranges out of range.
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1.0, got {dual_clip}")
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0; got clip_low={clip_low}, clip_high={clip_high}")
    real = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(real, logprobs - old_logprobs, zero)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(ratio.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    if dual_clip is not None:
        dual_bound = -advantages * dual_clip
        dual_active = (advantages < 0) & (dual_bound < per_token)
        per_token = torch.where(dual_active, dual_bound, per_token)
    else:
        dual_active = torch.zeros_like(real)
    if token_weights is not None:  # e.g. truncated importance weights; constants, no gradient through them
        per_token = per_token * torch.where(real, token_weights.detach().to(per_token.dtype), zero)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        neg_log_ratio = -log_ratio.detach()
        stats = {
            "clip_fraction": masked_mean(clip_active.to(ratio.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(neg_log_ratio) - neg_log_ratio, mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
            "dual_clip_fraction": masked_mean(dual_active.to(ratio.dtype), mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""Clipped value loss (PPO2 / OpenAI baselines; Schulman et al. 2017 implementation):

    .. math::
        V^{clip}_t = V^{old}_t + \mathrm{clip}(V_t - V^{old}_t, -c, c), \qquad
        L_t = \tfrac{1}{2} \max\left((V_t - R_t)^2, (V^{clip}_t - R_t)^2\right)

    With ``clip_range=None``: :math:`L_t = \tfrac12 (V_t - R_t)^2`. Token mean over real
    tokens.

    Stats (detached scalars):
        * ``value_clip_fraction``: fraction of real tokens where the clipped error is
          strictly larger (0 without clipping).
        * ``explained_variance``: :math:`1 - \mathrm{Var}(R - V) / \mathrm{Var}(R)` over
          real tokens. If :math:`\mathrm{Var}(R) = 0` it is 1 when the residual variance is
          also 0 and 0 otherwise (scikit-learn's ``force_finite`` convention).
    """
    real = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(real, values, zero)
    old_values = torch.where(real, old_values.to(values.dtype), zero)
    returns = torch.where(real, returns.to(values.dtype), zero)
    err = (values - returns).square()
    if clip_range is None:
        per_token = 0.5 * err
        clip_active = torch.zeros_like(real)
    else:
        if clip_range < 0:
            raise ValueError(f"clip_range must be >= 0 or None, got {clip_range}")
        v_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err_clipped = (v_clipped - returns).square()
        per_token = 0.5 * torch.maximum(err, err_clipped)
        clip_active = err_clipped > err
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        var_returns = masked_var(returns, mask, unbiased=False)
        var_residual = masked_var((returns - values).detach(), mask, unbiased=False)
        explained = torch.where(
            var_returns > 0,
            1.0 - var_residual / var_returns.clamp(min=torch.finfo(var_returns.dtype).tiny),
            (var_residual == 0).to(var_returns.dtype),
        )
        stats = {
            "value_clip_fraction": masked_mean(clip_active.to(values.dtype), mask),
            "explained_variance": explained.detach(),
        }
    return loss, stats


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    r"""KL-to-reference term placed directly in the loss, as in GRPO (Shao et al. 2024,
    eq. 4, with the k3 estimator):

    .. math:: L_{KL} = \mathrm{mean}_{t \in mask}\left[\frac{\pi_{ref}}{\pi} - \log\frac{\pi_{ref}}{\pi} - 1\right]

    Token mean over real tokens of :func:`kl_penalty`. The caller multiplies by beta.
    Padding is zeroed before the estimator so it cannot produce inf/NaN.
    """
    real = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    kl = kl_penalty(torch.where(real, logprobs, zero), torch.where(real, ref_logprobs.to(logprobs.dtype), zero), estimator)
    return masked_mean(kl, mask)


def truncated_importance_weights(
    trainer_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float
) -> Tensor:
    r"""Truncated importance sampling weights for the train-inference mismatch (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"):

    .. math::
        w_t = \min\left(\frac{\pi_{train}(x_t)}{\pi_{rollout}(x_t)},\; C\right)

    where the tokens were sampled by the rollout engine (vLLM) and :math:`\pi_{train}` is the trainer's
    probability of the same token under the same weights. Detached; 0 at padding. Only the upper side is
    truncated, as in the paper.
    """
    real = mask.bool()
    log_ratio = torch.where(real, trainer_logprobs.detach() - rollout_logprobs.detach(), torch.zeros_like(trainer_logprobs))
    return torch.where(real, torch.exp(log_ratio).clamp(max=cap), torch.zeros_like(log_ratio))
