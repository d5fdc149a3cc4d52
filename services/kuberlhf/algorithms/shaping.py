"""DAPO's changes to what a batch teaches (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
at Scale"): a soft penalty for overlong completions, and leaving out groups whose samples all scored the same.

Pure torch, like the rest of the package. Sequence tensors are [B] with the G samples of each prompt consecutive.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["overlong_penalty", "groups_with_signal", "pick_groups"]


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, penalty: float = 1.0) -> Tensor:
    r"""Soft overlong punishment (DAPO eq. 13), added to each sequence's reward:

    .. math::
        R_{length}(y) = \begin{cases}
        0 & |y| \le L_{max} - L_{cache} \\
        \frac{(L_{max} - L_{cache}) - |y|}{L_{cache}} & L_{max} - L_{cache} < |y| \le L_{max} \\
        -1 & |y| > L_{max}
        \end{cases}

    times ``penalty`` (the paper's is 1). ``max_length`` is :math:`L_{max}` (the completion limit), ``buffer``
    :math:`L_{cache}`: completions longer than ``max_length - buffer`` lose reward linearly, reaching ``-penalty``
    at the limit. ``buffer=0`` gives no penalty up to the limit. Same as TRL's ``get_soft_overlong_punishment``.

    Raises:
        ValueError: ``buffer`` negative or above ``max_length``.
    """
    if not 0 <= buffer <= max_length:
        raise ValueError(f"need 0 <= buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    lengths = lengths.to(torch.float32)
    start = max_length - buffer
    ramp = (start - lengths) / buffer if buffer > 0 else torch.zeros_like(lengths)
    shaped = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return penalty * torch.where(lengths > max_length, torch.full_like(lengths, -1.0), shaped)


def groups_with_signal(scores: Tensor, group_size: int, tolerance: float = 1e-6) -> Tensor:
    r"""DAPO's dynamic-sampling filter (eq. 11's constraint :math:`0 < |\{o_i : \text{correct}\}| < G`, in
    general form): a group whose rewards are all equal has no advantage signal, so it is left out of the loss
    (otherwise its tokens only dilute the token mean). Returns a [B] bool mask, true for every row of a group
    whose rewards differ by more than ``tolerance``.

    Raises:
        ValueError: B not divisible by ``group_size``.
    """
    if scores.dim() != 1 or group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(f"scores [B] with B divisible by group_size; got {tuple(scores.shape)} and {group_size}")
    grouped = scores.view(-1, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return (spread > tolerance).repeat_interleave(group_size)


def pick_groups(scores: Tensor, group_size: int, keep: int) -> list[int]:
    """DAPO's dynamic sampling from an over-sampled batch: the rows of `keep` groups, groups with a reward signal
    (:func:`groups_with_signal`) first, each kind in sampled order, then uniform groups to fill the batch when
    too few have one. The chosen rows stay in their sampled order.

    Raises:
        ValueError: fewer than `keep` groups.
    """
    signal = groups_with_signal(scores, group_size).view(-1, group_size)[:, 0].tolist()
    if keep > len(signal):
        raise ValueError(f"cannot keep {keep} groups of {len(signal)}")
    order = [g for g, has in enumerate(signal) if has] + [g for g, has in enumerate(signal) if not has]
    return [g * group_size + i for g in sorted(order[:keep]) for i in range(group_size)]
