"""The reward role: scores completions with a reward model (sequence classification, one logit).

Reward *functions* do not need this actor: they run inside the rollout workers, on the completions where
they were sampled (no extra hop, and data-parallel with the rollout workers)."""

from __future__ import annotations

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.models.loading import load_reward_model, load_tokenizer
from kuberlhf.models.reward import score_texts
from kuberlhf.engines.process import configure_process, frozen_dtype, returns_cached_gpu_memory, worker_device
from kuberlhf.workers.metrics import exports_metrics


class RewardWorker:
    def __init__(self, model_path: str, batch_size: int, cpus: float, seed: int, bf16: bool = False) -> None:
        configure_process(cpus, seed)
        self.batch_size = batch_size
        self.device = worker_device()
        self.model = load_reward_model(model_path, frozen_dtype(self.device, bf16)).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_path, padding_side="right", field="spec.reward.model")

    @exports_metrics
    @returns_cached_gpu_memory
    def score(self, batch: RolloutBatch) -> torch.Tensor:
        """One scalar reward per completion [B]: the model's output on prompt + completion + EOS (or on the
        rendered conversation)."""
        return score_texts(self.model, self.tokenizer, batch.prompts, batch.completions, self.batch_size,
                           self.device, batch.prompt_messages)
