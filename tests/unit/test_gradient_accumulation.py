"""Gradient accumulation gives the same update as one pass over the whole mini-batch (token-weighted)."""

from __future__ import annotations

import copy

import torch

from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.engines.training import TorchTrainingEngine, TrainingSetup
from kuberlhf.workers.common import accumulate_micro_batches


def experience(rows: int = 6, width: int = 3) -> Experience:
    torch.manual_seed(0)
    mask = torch.ones(rows, width)
    mask[0, 1:] = 0  # uneven lengths: a plain mean of micro-batch means would differ
    mask[3, 2:] = 0
    rollout = RolloutBatch(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        response_ids=torch.ones(rows, width, dtype=torch.long), response_mask=mask,
        rollout_logprobs=torch.zeros(rows, width), prompts=["p"] * rows, completions=["c"] * rows,
    )
    return Experience(rollout=rollout, advantages=torch.randn(rows, width))


def token_mean_loss(model: torch.nn.Linear, part: Experience) -> tuple[torch.Tensor, dict[str, float]]:
    mask = part.rollout.response_mask
    per_token = model(part.advantages.unsqueeze(-1)).squeeze(-1) ** 2
    loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"loss": float(loss.detach())}


def test_micro_batches_reproduce_the_whole_mini_batch_update():
    torch.manual_seed(1)
    whole, micro = torch.nn.Linear(1, 1), None
    micro = copy.deepcopy(whole)
    engines = [TorchTrainingEngine(m, TrainingSetup(0.1, 0.0, 10.0)) for m in (whole, micro)]
    batch = experience()
    once = accumulate_micro_batches(engines[0], batch, None, lambda part: token_mean_loss(whole, part))
    split = accumulate_micro_batches(engines[1], batch, 2, lambda part: token_mean_loss(micro, part))
    torch.testing.assert_close(micro.weight, whole.weight)
    torch.testing.assert_close(micro.bias, whole.bias)
    assert abs(once["loss"] - split["loss"]) < 1e-6 and abs(once["grad_norm"] - split["grad_norm"]) < 1e-6
