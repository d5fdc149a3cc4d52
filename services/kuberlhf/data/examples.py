"""Offline-stage examples as token ids, and their batches.

Every example is a prompt and one or two completions (the chosen and rejected answers of a pair), tokenized
separately so the loss can score the completion alone. Conversations are rendered with the tokenizer's chat
template: the prompt with the generation prompt appended, the completion as the rest of the rendered
conversation (which ends its own turn). Standard completions get the tokenizer's EOS appended (the model
learns to stop). Language-modelling rows
(`text`, `messages`) become a one-token prompt (BOS, or the text's first token) and the rest as completion.

A batch is a `RolloutBatch` (left-padded prompts, right-padded completions), so the forward helpers of the
online stages (`models/forward.py`) score offline examples unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.data.formats import Dataset
from kuberlhf.errors import UserError


@dataclass
class Examples:
    """Token ids of a dataset's examples; `rejected` for pairs, `labels` for KTO, `kl_completions` for KTO's
    reference point (the completion of another example, fixed once: example i takes example i+1's)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    rejected: list[list[int]] | None = None
    labels: list[bool] | None = None
    kl_completions: list[list[int]] | None = None
    truncated: int = 0  # completions cut at data.maxLength
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def tokenize_dataset(dataset: Dataset, tokenizer: Any, max_length: int, field_name: str = "spec.data.train") -> Examples:
    """Token ids of every row; a prompt that leaves no room for its completion is an error naming the row."""
    if dataset.conversational and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{field_name}: {dataset.path} holds conversations (lists of messages) but the model's "
                        f"tokenizer has no chat template to render them")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = Examples([], [], where=list(dataset.where))
    pairs = dataset.format == "preference"
    if pairs:
        examples.rejected = []
    if dataset.format == "unpaired_preference":
        examples.labels = []
    for row, place in zip(dataset.rows, dataset.where):
        if dataset.format in ("language_modeling", "conversation"):
            prompt, completion = _split_text(_text_of(row, tokenizer), tokenizer, eos)
            completions = [completion]
        else:
            prompt_text, answers = _render(row, dataset.format, tokenizer, place)
            prompt = tokenizer(prompt_text, add_special_tokens=not dataset.conversational).input_ids
            end = [] if dataset.conversational else eos  # a rendered conversation ends its own turn
            completions = [tokenizer(a, add_special_tokens=False).input_ids + end for a in answers]
        room = max_length - len(prompt)
        if room < 1:
            raise UserError(f"{place}: the prompt is {len(prompt)} tokens, which leaves no room for a completion "
                            f"within spec.data.maxLength = {max_length}")
        for index, completion in enumerate(completions):
            if len(completion) > room:
                completions[index] = completion[:room]
                examples.truncated += 1
        examples.prompts.append(prompt)
        examples.completions.append(completions[0])
        if pairs:
            examples.rejected.append(completions[1])
        if examples.labels is not None:
            examples.labels.append(bool(row["label"]))
    if examples.labels is not None:
        examples.kl_completions = [examples.completions[(i + 1) % len(examples)] for i in range(len(examples))]
    return examples


def make_batch(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int) -> RolloutBatch:
    """Left-padded prompts and right-padded completions, with their masks (no log-probs, no texts)."""
    prompt_width = max(len(p) for p in prompts)
    completion_width = max(len(c) for c in completions)
    prompt_ids = torch.tensor([[pad_token_id] * (prompt_width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (prompt_width - len(p)) + [1] * len(p) for p in prompts])
    response_ids = torch.tensor([c + [pad_token_id] * (completion_width - len(c)) for c in completions])
    response_mask = torch.tensor([[1.0] * len(c) + [0.0] * (completion_width - len(c)) for c in completions])
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, rollout_logprobs=torch.zeros(response_mask.shape),
                        prompts=[""] * len(prompts), completions=[""] * len(prompts))


def _text_of(row: dict[str, Any], tokenizer: Any) -> str:
    if "messages" in row:
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    return row["text"]


def _split_text(text: str, tokenizer: Any, eos: list[int]) -> tuple[list[int], list[int]]:
    """Language modelling: every token is trained on, so the prompt is only what the first one is predicted
    from (BOS when the tokenizer has one)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids + eos
    if tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id], ids
    return ids[:1], ids[1:]


def _render(row: dict[str, Any], data_format: str, tokenizer: Any, place: str) -> tuple[str, list[str]]:
    """Prompt text and completion texts (chosen, rejected for pairs)."""
    keys = ["chosen", "rejected"] if data_format == "preference" else ["completion"]
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return prompt, [row[key] for key in keys]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    answers = []
    for key in keys:
        full = tokenizer.apply_chat_template(prompt + row[key], tokenize=False)
        if not full.startswith(prompt_text):
            raise UserError(f"{place}: the chat template renders {key!r} in a way that does not extend the "
                            f"rendered prompt; use standard (string) fields with this tokenizer")
        answers.append(full[len(prompt_text):])
    return prompt_text, answers
