"""SFT packing: several short examples share one sequence of at most `data.maxLength` tokens, so a batch holds
real tokens instead of padding.

Examples are grouped by best-fit decreasing (each example, longest first, goes into the fullest pack it still
fits in). Inside a pack, position ids restart at 0 for every example and no attention mask is passed:
transformers then builds a block-diagonal causal mask from the position ids (`find_packed_sequence_indices`),
so no token attends to another example, and each example's log-probs equal those it gets on its own
(tested). The loss counts each example's target tokens only, never the boundary between two examples.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor

from kuberlhf.algorithms.losses import token_logprobs
from kuberlhf.data.examples import Examples


def pack_by_best_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices of the items in each pack, by best-fit decreasing: items longest first (ties in index order),
    each into the pack with the least room left that still holds it, else a new pack. Every pack's lengths
    sum to at most `max_length`; packs are listed in the order they were opened, items in the order placed."""
    too_long = [i for i, length in enumerate(lengths) if length > max_length]
    if too_long:
        raise ValueError(f"item {too_long[0]} is {lengths[too_long[0]]} long, more than max_length {max_length}")
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (room left, pack index), sorted
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(room, (lengths[item], -1))
        if at == len(room):
            packs.append([item])
            left, pack = max_length - lengths[item], len(packs) - 1
        else:
            left, pack = room.pop(at)
            packs[pack].append(item)
            left -= lengths[item]
        bisect.insort(room, (left, pack))
    return packs


@dataclass(frozen=True)
class PackedBatch:
    """Packed sequences [P, L] (right-padded), their position ids (restarting per example, and for the
    padding) and which tokens are trained on (1 on the targets of each example)."""

    input_ids: Tensor
    position_ids: Tensor
    target_mask: Tensor

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.target_mask.to(device))


def packed_batch(examples: Examples, packs: list[list[int]], pad_token_id: int) -> PackedBatch:
    """The packs as one batch: each example is its prompt then its completion (the targets)."""
    rows, positions, targets = [], [], []
    for pack in packs:
        ids, position, target = [], [], []
        for i in pack:
            prompt, completion = examples.prompts[i], examples.completions[i]
            ids += prompt + completion
            position += list(range(len(prompt) + len(completion)))
            target += [0.0] * len(prompt) + [1.0] * len(completion)
        rows.append(ids)
        positions.append(position)
        targets.append(target)
    width = max(len(row) for row in rows)
    return PackedBatch(
        input_ids=torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows]),
        position_ids=torch.tensor([p + list(range(width - len(p))) for p in positions]),
        target_mask=torch.tensor([t + [0.0] * (width - len(t)) for t in targets]),
    )


def packed_logprobs(model: torch.nn.Module, batch: PackedBatch) -> tuple[Tensor, Tensor]:
    """Log-probs [P, L-1] of every next token, and the mask [P, L-1] of those that are targets. No KV cache:
    transformers reads the packing from the position ids only when there is none."""
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[:, :-1]
    return token_logprobs(logits, batch.input_ids[:, 1:]), batch.target_mask[:, 1:]
