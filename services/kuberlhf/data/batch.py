"""The tensors that travel between workers in one online step.

A `RolloutBatch` is what the rollout engines produce: left-padded prompts followed by right-padded responses
(response tokens after the first EOS are padding). An `Experience` adds what the trainer computed from it:
advantages, returns, old and reference log-probabilities. Both are plain dataclasses of CPU tensors so Ray
can ship them between actors (a worker on a GPU moves them with `.to(device)` and returns CPU tensors);
samples of one prompt are consecutive rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P] 1 for real prompt tokens
    response_ids: Tensor  # [B, R] right-padded
    response_mask: Tensor  # [B, R] float, 1 up to and including the first EOS
    rollout_logprobs: Tensor  # [B, R] log-probabilities of the sampled tokens under the rollout engine
    prompts: list[str]
    completions: list[str]
    scores: Tensor | None = None  # [B] rewards, when a reward function scored the batch where it was sampled
    prompt_messages: list[list[dict[str, Any]]] | None = None  # conversational prompts: each row's messages
    reward_log: Any = None  # reward_functions.RewardLog: what the reward function logged (TRL's log_metric/extra)
    weight_version: int | None = None  # policy updates behind the engine's weights when it sampled (the oldest rank's)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, indices: list[int]) -> RolloutBatch:
        return _select(self, indices)

    @staticmethod
    def concat(parts: list[RolloutBatch]) -> RolloutBatch:
        """Join batches, re-padding prompts on the left and responses on the right."""
        if len(parts) == 1:
            return parts[0]
        return RolloutBatch(
            prompt_ids=_pad_cat([p.prompt_ids for p in parts], left=True),
            prompt_mask=_pad_cat([p.prompt_mask for p in parts], left=True),
            response_ids=_pad_cat([p.response_ids for p in parts], left=False),
            response_mask=_pad_cat([p.response_mask for p in parts], left=False),
            rollout_logprobs=_pad_cat([p.rollout_logprobs for p in parts], left=False),
            prompts=[text for p in parts for text in p.prompts],
            completions=[text for p in parts for text in p.completions],
            scores=torch.cat([p.scores for p in parts]) if all(p.scores is not None for p in parts) else None,
            prompt_messages=[m for p in parts for m in p.prompt_messages]
            if all(p.prompt_messages is not None for p in parts) else None,
            reward_log=type(parts[0].reward_log).concat([p.reward_log for p in parts])
            if all(p.reward_log is not None for p in parts) else None,
            weight_version=min(p.weight_version for p in parts)
            if all(p.weight_version is not None for p in parts) else None,
        )

    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    def to(self, device: torch.device) -> RolloutBatch:
        return _to(self, device)


@dataclass
class Experience:
    """A rollout plus everything the update needs; `None` fields are not used by the algorithm."""

    rollout: RolloutBatch
    advantages: Tensor  # [B, R]
    old_logprobs: Tensor | None = None  # [B, R]; None: the update's first forward pass is the old policy
    ref_logprobs: Tensor | None = None  # [B, R]; for a KL loss term
    returns: Tensor | None = None  # [B, R]; critic targets (PPO)
    old_values: Tensor | None = None  # [B, R]; for value clipping (PPO)

    def __len__(self) -> int:
        return len(self.rollout)

    def select(self, indices: list[int]) -> Experience:
        return _select(self, indices)

    def to(self, device: torch.device) -> Experience:
        return _to(self, device)


def split_indices(total: int, n: int) -> list[list[int]]:
    """[0..total) in n contiguous near-equal parts, empty parts dropped."""
    size, extra = divmod(total, n)
    parts, start = [], 0
    for rank in range(n):
        stop = start + size + (1 if rank < extra else 0)
        if stop > start:
            parts.append(list(range(start, stop)))
        start = stop
    return parts


def _select(obj: Any, indices: list[int]) -> Any:
    index = torch.as_tensor(indices, dtype=torch.long)
    changes: dict[str, Any] = {}
    for field in fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, Tensor):
            changes[field.name] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list):
            changes[field.name] = [value[i] for i in indices]
        elif hasattr(value, "select"):
            changes[field.name] = value.select(indices)
    return replace(obj, **changes)


def _to(obj: Any, device: torch.device) -> Any:
    """A copy with every tensor (also those of a nested batch) on `device`; the same object when nothing moves."""
    changes: dict[str, Any] = {}
    for field in fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, Tensor) and value.device != device:
            changes[field.name] = value.to(device, non_blocking=True)
        elif hasattr(value, "to") and not isinstance(value, Tensor):
            moved = value.to(device)
            if moved is not value:
                changes[field.name] = moved
    return replace(obj, **changes) if changes else obj


def _pad_cat(tensors: list[Tensor], left: bool) -> Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = torch.zeros(t.shape[0], width - t.shape[1], dtype=t.dtype)
        padded.append(torch.cat([pad, t] if left else [t, pad], dim=1))
    return torch.cat(padded, dim=0)
