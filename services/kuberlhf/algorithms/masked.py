"""Masked reductions over batch-first token tensors.

Pure torch helpers used by every RL algorithm in :mod:`kuberlhf.algorithms`: means,
variances and whitening restricted to the real (unpadded) response tokens. This module
must not import Ray (or transformers): it runs inside trainer workers and in unit tests.

Convention: ``values`` and ``mask`` have the same shape (usually [B, T] over response
tokens). ``mask`` is 1 (or True) for real tokens and 0 for padding. Padding entries never
influence a result, even when they hold inf/NaN: they are replaced by 0 before any
arithmetic, so they contribute neither to the forward value nor to gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "masked_var", "masked_whiten"]


def _masked_values(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(values * mask with padding forced to 0, mask as values' dtype)``."""
    mask_f = mask.to(values.dtype)
    zeros = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(mask.bool(), values, zeros) * mask_f, mask_f


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    r"""Mean of ``values`` over the entries where ``mask`` is non-zero.

    .. math:: \bar{x} = \frac{\sum_i m_i x_i}{\max(1, \sum_i m_i)}

    The denominator is clamped to at least 1, so an all-padding mask gives 0 rather than
    NaN (a fully padded batch contributes nothing instead of poisoning the loss). A float
    mask acts as per-entry weights; note the clamp then also applies to weight sums < 1.

    Args:
        values: any shape.
        mask: same shape as ``values``; bool or float.
        dim: reduce over this dimension only; ``None`` reduces over everything (scalar).
    """
    masked, mask_f = _masked_values(values, mask)
    if dim is None:
        return masked.sum() / mask_f.sum().clamp(min=1.0)
    return masked.sum(dim=dim) / mask_f.sum(dim=dim).clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    r"""Variance of ``values`` over all masked entries (a scalar).

    .. math:: \sigma^2 = \frac{\sum_i m_i (x_i - \bar{x})^2}{\sum_i m_i}
              \cdot \frac{n}{n - 1}\ \text{(if unbiased)}, \quad n = \sum_i m_i

    Simplification: when ``n <= 1`` Bessel's correction is undefined; instead of raising
    (as TRL does) the biased estimate is returned, which is 0 for a single entry and 0 for
    an empty mask.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.to(values.dtype).sum()
        # torch.where instead of `if n > 1` keeps this free of a host-device sync.
        var = var * torch.where(n > 1, n / (n - 1).clamp(min=1e-12), torch.ones_like(n))
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    r"""Standardise ``values`` with statistics of the masked entries only.

    .. math:: \hat{x}_i = \frac{x_i - \bar{x}}{\sqrt{\sigma^2 + \epsilon}}

    with :math:`\bar{x}`, :math:`\sigma^2` from :func:`masked_mean` / :func:`masked_var`
    (unbiased). With ``shift_mean=False`` the mean is added back
    (:math:`\hat{x}_i + \bar{x}`, the TRL/OpenAI ``lm-human-preferences`` convention): only
    the scale is normalised. Padding entries are 0 in the output.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    zeros = torch.zeros((), dtype=whitened.dtype, device=whitened.device)
    return torch.where(mask.bool(), whitened, zeros)
