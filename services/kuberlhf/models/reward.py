"""Scoring with a reward model (a sequence classifier with one output), the same way everywhere: the rm stage
trains on it, the reward role and the reward service score with it.

A scored sequence is the prompt's tokens, the completion's tokens and the tokenizer's EOS, right-padded; the
model reads its output at the last real token (the EOS), so a reward model trained by an `rm` stage is used
exactly as it was trained. A conversation is rendered with the reward model's chat template, as the `rm` stage
renders conversational pairs (and TRL scores them): the prompt with the generation prompt, then the rest of
the conversation with the completion as the assistant's turn, which the template ends itself.
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
                device: torch.device, prompt_messages: list[list[dict[str, Any]]] | None = None) -> torch.Tensor:
    """Rewards [B] (CPU, float32) of prompt / completion texts, `batch_size` sequences per forward pass; with
    `prompt_messages` and a tokenizer that has a chat template, of the rendered conversations."""
    if prompt_messages is not None and getattr(tokenizer, "chat_template", None):
        pieces = [conversation_ids(tokenizer, messages, text) for messages, text in zip(prompt_messages, completions)]
        prompt_ids, completion_ids = [p for p, _ in pieces], [c for _, c in pieces]
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        prompt_ids = tokenizer(prompts).input_ids
        completion_ids = [ids + eos for ids in tokenizer(completions, add_special_tokens=False).input_ids]
    scores = []
    for start in range(0, len(prompt_ids), batch_size):
        stop = start + batch_size
        scores.append(sequence_rewards(model, prompt_ids[start:stop], completion_ids[start:stop],
                                       tokenizer.pad_token_id, device).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def conversation_ids(tokenizer: Any, messages: list[dict[str, Any]], completion: str) -> tuple[list[int], list[int]]:
    """Token ids of a rendered prompt (with the generation prompt) and of the rest of the rendered conversation
    once `completion` is the assistant's answer; a template whose full rendering does not extend the prompt's
    (some drop earlier reasoning) falls back to the completion and EOS."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=False)
    if full.startswith(prompt):
        rest = tokenizer(full[len(prompt):], add_special_tokens=False).input_ids
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        rest = tokenizer(completion, add_special_tokens=False).input_ids + eos
    return tokenizer(prompt, add_special_tokens=False).input_ids, rest
