"""Forward passes over rollout batches, shared by the policy, reference and critic workers.

A rollout row is [left-padded prompt | right-padded response]; the logits at position t predict token t+1,
so response token j is predicted at position P - 1 + j. Position ids come from the attention mask so left
padding does not shift positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kuberlhf.algorithms import entropy_from_logits, token_logprobs
from kuberlhf.data.batch import RolloutBatch


def sequence_inputs(batch: RolloutBatch) -> tuple[Tensor, Tensor, Tensor]:
    """input_ids, attention_mask and position_ids of prompt + response."""
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask.to(batch.prompt_mask.dtype)], dim=1)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logits(model: nn.Module, batch: RolloutBatch) -> Tensor:
    """Logits [B, R, V] that predict each response token.

    Only the last R + 1 positions go through the LM head (`logits_to_keep`; the very last predicts nothing):
    with a large vocabulary the head and the float32 log-softmax after it are a large share of a step,
    and prompt positions need neither."""
    input_ids, attention_mask, position_ids = sequence_inputs(batch)
    kept = batch.response_ids.shape[1] + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=kept).logits
    return logits[:, :-1]


def response_logprobs(
    model: nn.Module, batch: RolloutBatch, temperature: float, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities [B, R] of the response tokens (and their entropies) at the sampling temperature."""
    logits = response_logits(model, batch)
    logprobs = token_logprobs(logits, batch.response_ids, temperature)
    entropy = entropy_from_logits(logits.detach(), temperature) if with_entropy else None
    return logprobs, entropy


def response_values(value_model: nn.Module, batch: RolloutBatch) -> Tensor:
    """Values [B, R]: the value of the state before each response token."""
    input_ids, attention_mask, position_ids = sequence_inputs(batch)
    values = value_model(input_ids, attention_mask, position_ids)
    prompt_width = batch.prompt_ids.shape[1]
    return values[:, prompt_width - 1 : -1]


@torch.no_grad()
def prompt_token_logprobs(model: nn.Module, rows: list[list[int]]) -> list[Tensor]:
    """Log-probability (temperature 1) of each row's tokens after its first, given the tokens before: what a
    generation engine's `prompt_logprobs` returns for the same rows, computed by `model` (the weight-sync probe)."""
    device = next(model.parameters()).device
    out = []
    for ids in rows:
        tokens = torch.tensor([ids], device=device)
        logits = model(input_ids=tokens).logits[:, :-1].float()
        out.append(token_logprobs(logits, tokens[:, 1:], 1.0)[0].cpu())
    return out
