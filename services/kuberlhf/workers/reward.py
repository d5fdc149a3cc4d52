"""The reward role: scores completions with a reward model or a user reward function."""

from __future__ import annotations

from typing import Any

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.models.loading import load_reward_model, load_tokenizer
from kuberlhf.reward_functions import call_reward_function, import_reward_function
from kuberlhf.workers.common import configure_process


class RewardWorker:
    def __init__(self, model_path: str | None, function: str | None, batch_size: int, cpus: float, seed: int) -> None:
        configure_process(cpus, seed)
        self.batch_size = batch_size
        self.function_name = function
        self.function = import_reward_function(function) if function else None
        self.model = load_reward_model(model_path).eval() if model_path else None
        self.tokenizer = load_tokenizer(model_path, padding_side="right") if model_path else None

    def score(self, batch: RolloutBatch, columns: dict[str, list[Any]]) -> torch.Tensor:
        """One scalar reward per completion [B]."""
        if self.function is not None:
            values = call_reward_function(self.function, self.function_name, batch.prompts, batch.completions, columns)
            return torch.tensor(values, dtype=torch.float32)
        return self._score_with_model([p + c for p, c in zip(batch.prompts, batch.completions)])

    @torch.no_grad()
    def _score_with_model(self, texts: list[str]) -> torch.Tensor:
        scores = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True)
            scores.append(self.model(**encoded).logits[:, 0].float())
        return torch.cat(scores)
