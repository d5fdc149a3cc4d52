"""Scoring with a reward model (a sequence classifier with one output), the same way everywhere: the rm stage
trains on it, the reward role and the reward service score with it.

A scored sequence is the prompt's tokens, the completion's tokens and the tokenizer's EOS, right-padded; the
model reads its output at the last real token (the EOS), so a reward model trained by an `rm` stage is used
exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

import torch


def sequence_rewards(model: Any, prompts: list[list[int]], completions: list[list[int]], pad_token_id: int,
                     device: torch.device) -> torch.Tensor:
    """The reward model's score [B] of each prompt + completion token sequence (the EOS already appended)."""
    sequences = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in sequences)
    input_ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    return model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float()


@torch.no_grad()
def score_texts(model: Any, tokenizer: Any, prompts: list[str], completions: list[str], batch_size: int,
                device: torch.device) -> torch.Tensor:
    """Rewards [B] (CPU, float32) of prompt / completion texts, `batch_size` sequences per forward pass."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = tokenizer(prompts).input_ids
    completion_ids = [ids + eos for ids in tokenizer(completions, add_special_tokens=False).input_ids]
    scores = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        scores.append(sequence_rewards(model, prompt_ids[start:stop], completion_ids[start:stop],
                                       tokenizer.pad_token_id, device).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)
